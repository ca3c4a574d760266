"""Two-rank scenarios for tests/distributed (run as a script, one process per rank, gloo on CPU).

    RANK=r WORLD_SIZE=2 python tests/distributed/scenarios.py OUT_DIR [cuda] file:///tmp/store

(``cuda``: NCCL, rank r on cuda:r; default gloo on the CPU.)

Every scenario writes ``OUT_DIR/<name>.rank<r>.pt`` (FP32 weights, step flags, loss scale) for
test_distributed_engine.py to compare against single-process references built by ``dist_common.py``.
One launch runs them all, so the ~10 s start-up of two torch processes is paid once.
"""

import contextlib
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import dist_common as common

import mixprec as mp
import mixprec.distributed as mpd

PRESETS = ["32", "16-mixed", "bf16-mixed", "16-master", "bf16-master"]
DEVICE = torch.device("cpu")


def build(kind, preset, reduce_dtype=None):
    model = common.make_model().to(DEVICE)
    prec = mp.Precision(preset, device=DEVICE, scaler=common.make_scaler(preset))
    if kind == "fsdp":
        mpd.fully_shard_model(model, preset, reduce_dtype=reduce_dtype)
        opt = common.make_optimizer(model)
        model, opt = prec.setup(model, opt)
    else:
        opt = common.make_optimizer(model)
        model, opt = prec.setup(model, opt)
        ids = [DEVICE.index] if DEVICE.type == "cuda" else None
        model = mpd.ddp(model, opt, prec, reduce_dtype=reduce_dtype, device_ids=ids)
    return model, opt, prec


def weights(kind, model, opt):
    if kind == "fsdp":
        return {n: p.full_tensor().detach().float().cpu() for n, p in model.named_parameters()}
    return {n: w.cpu() for n, w in common.fp32_weights(mpd.unwrap(model), opt).items()}


def save(out, name, kind, model, opt, prec, flags=()):
    torch.save({"weights": weights(kind, model, opt), "flags": list(flags), "scale": prec.scaler.scale,
                "steps": prec.steps, "skipped": prec.skipped_steps},
               out / f"{name}.rank{dist.get_rank()}.pt")


def train(model, prec, opt, steps, start=0, inject_at=None, rank=0):
    flags = []
    for step in range(start, start + steps):
        x, y = (t.to(DEVICE) for t in common.batch(step, rank=rank, world=2))
        with prec.autocast():
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        prec.backward(loss)
        if step == inject_at and rank == 1:
            common.inject_inf(model, opt)
        flags.append(prec.step(opt, max_norm=common.MAX_NORM))
        opt.zero_grad(set_to_none=True)
    return flags


def train_accumulating(kind, model, prec, opt, steps, rank, no_sync):
    """Each step: this rank's rows in two micro-batches (loss halved), one optimizer step.
    ``no_sync``: the first backward skips the gradient all-reduce (DDP ``no_sync`` / FSDP2
    ``set_requires_gradient_sync(False)``), the second reduces the accumulated sum."""
    for step in range(steps):
        x, y = (t.to(DEVICE) for t in common.batch(step, rank=rank, world=2))
        for micro in range(2):
            rows = slice(micro * 2, micro * 2 + 2)
            sync = not (no_sync and micro == 0)
            if kind == "fsdp":
                model.set_requires_gradient_sync(sync)
                context = contextlib.nullcontext()
            else:
                context = contextlib.nullcontext() if sync else model.no_sync()
            with context:
                with prec.autocast():
                    loss = torch.nn.functional.mse_loss(model(x[rows]).float(), y[rows]) / 2
                prec.backward(loss)
        prec.step(opt, max_norm=common.MAX_NORM)
        opt.zero_grad(set_to_none=True)


def main(out, init, device="cpu"):
    global DEVICE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        DEVICE = torch.device(f"cuda:{rank}")
        torch.cuda.set_device(DEVICE)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=init, rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*pure half precision")
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("ddp", "fsdp"):
        for preset in PRESETS:  # parity with one process on the concatenated batches
            model, opt, prec = build(kind, preset)
            flags = train(model, prec, opt, common.STEPS, rank=rank)
            save(out, f"{kind}-{preset}", kind, model, opt, prec, flags)
        for preset in ("16-true", "bf16-true"):  # pure half: no master on either path
            model, opt, prec = build(kind, preset)
            flags = train(model, prec, opt, common.STEPS, rank=rank)
            save(out, f"{kind}-{preset}", kind, model, opt, prec, flags)
        for preset, reduce in (("bf16-mixed", "bf16"), ("16-mixed", "fp16")):  # compressed reduction
            model, opt, prec = build(kind, preset, reduce_dtype=reduce)
            save(out, f"{kind}-{preset}-reduce-{reduce}", kind, model, opt, prec,
                 train(model, prec, opt, common.STEPS, rank=rank))
        for preset in ("16-mixed", "16-master"):  # inf on rank 1 only
            model, opt, prec = build(kind, preset)
            flags = train(model, prec, opt, 3, inject_at=1, rank=rank)
            save(out, f"{kind}-{preset}-inf", kind, model, opt, prec, flags)
        for preset in ("16-master", "bf16-master"):  # save at step 3, resume, 3 more steps
            straight = build(kind, preset)
            train(straight[0], straight[2], straight[1], 6, rank=rank)
            save(out, f"{kind}-{preset}-straight", kind, *straight)
            first = build(kind, preset)
            train(first[0], first[2], first[1], 3, rank=rank)
            ckpt = out / f"ckpt-{kind}-{preset}{'' if kind == 'fsdp' else '.pt'}"
            mpd.save_checkpoint(ckpt, first[0], first[1], first[2], extra={"step": 3})
            del first
            model, opt, prec = build(kind, preset)
            extra = mpd.load_checkpoint(ckpt, model, opt, prec)
            train(model, prec, opt, 3, start=extra["step"], rank=rank)
            save(out, f"{kind}-{preset}-resumed", kind, model, opt, prec)
    for kind in ("ddp", "fsdp"):  # gradient accumulation over two micro-batches
        for no_sync in (False, True):
            model, opt, prec = build(kind, "bf16-master")
            train_accumulating(kind, model, prec, opt, common.STEPS, rank, no_sync)
            save(out, f"{kind}-bf16-master-accum{'-nosync' if no_sync else ''}", kind, model, opt, prec)
    # plain DDP around a *-master model (without mpd.ddp): the step refuses, naming the fix
    model = common.make_model().to(DEVICE)
    prec = mp.Precision("bf16-master", device=DEVICE)
    model, opt = prec.setup(model, common.make_optimizer(model))
    setup_error = ""
    try:
        mp.Precision("bf16-master").setup(
            torch.nn.parallel.DistributedDataParallel(common.make_model().to(DEVICE)))
    except ValueError as e:
        setup_error = str(e)
    try:
        train(torch.nn.parallel.DistributedDataParallel(model), prec, opt, 1, rank=rank)
        step_error = ""
    except RuntimeError as e:
        step_error = str(e)
    torch.save({"setup_error": setup_error, "step_error": step_error},
               out / f"plain-ddp-master.rank{rank}.pt")
    # ddp(process_group=g) hands g to Precision: each rank in its own group, the inf on rank 1
    # skips rank 1's step only (found-inf is all-reduced over the group, not the world)
    groups = [dist.new_group([0]), dist.new_group([1])]  # collective: every rank makes both
    model = common.make_model().to(DEVICE)
    prec = mp.Precision("16-mixed", device=DEVICE, scaler=common.make_scaler("16-mixed"))
    model, opt = prec.setup(model, common.make_optimizer(model))
    model = mpd.ddp(model, opt, prec, process_group=groups[rank])
    flags = train(model, prec, opt, 3, inject_at=1, rank=rank)
    torch.save({"flags": flags, "group_handed": prec.process_group is groups[rank]},
               out / f"ddp-own-group-inf.rank{rank}.pt")
    # negative control: without the all-reduced verdict the ranks disagree
    model, opt, prec = build("ddp", "16-mixed")
    prec._all_reduce = lambda found_inf: found_inf
    save(out, "ddp-16-mixed-inf-unreduced", "ddp", model, opt, prec,
         train(model, prec, opt, 3, inject_at=1, rank=rank))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[-1], *sys.argv[2:-1])
