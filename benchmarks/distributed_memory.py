"""Per-rank training-state memory under FSDP2: parameters + gradients + optimizer state.

For det-s (the YOLO-style detector of ``mixprec.vision``) sharded with
``mixprec.distributed.fully_shard_model`` (one FSDP unit per layer, normalisation layers in FP32),
AdamW, after one real training step (so gradients and Adam state exist), each rank counts the
bytes of the distinct storages of its local shards. Presets ``32`` and ``bf16-master`` at world
sizes 1 and 2 (gloo, CPU), plus the unsharded single-process ``Precision`` for comparison. The
all-gathered half parameters are transient (freed after each unit's forward/backward) and
activations are not counted here: this is the state that sharding divides.

    python benchmarks/distributed_memory.py [--model det-s.yaml] [--worlds 1 2] [--imgsz 64]

Each world size is a fresh set of processes started by this script (rendezvous through a file
store in a temporary folder; nothing listens on the network beyond 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

PRESETS = ("32", "bf16-master")


def one_step(model, prec, opt, imgsz: int) -> None:
    x = torch.rand(1, 3, imgsz, imgsz)
    with prec.autocast():
        out = model(x)
        loss = sum(o.float().square().mean() for o in out)
    prec.backward(loss)
    prec.step(opt)


def state_bytes(model, opt) -> dict[str, int]:
    """Bytes of this rank's parameter, gradient and optimizer-state storages (local shards)."""
    from mixprec.bench.memory import tensor_bytes

    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    params = list(model.parameters())
    opt_params = [q for g in opt.param_groups for q in g["params"]]
    masters = [q for q in opt_params if all(q is not p for p in params)]  # MasterWeights copies
    grads = [local(q.grad) for q in [*params, *opt_params] if q.grad is not None]
    states = [local(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    out = {"params": tensor_bytes(local(p) for p in params), "master": tensor_bytes(masters),
           "grads": tensor_bytes(grads), "optimizer": tensor_bytes(states)}
    out["total"] = sum(out.values())
    return out


def build(model_yaml: str, preset: str, sharded: bool):
    import mixprec as mp
    import mixprec.distributed as mpd
    from mixprec.vision.models.detector import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(model_yaml)
    prec = mp.Precision(preset, device="cpu")
    if sharded:
        mpd.fully_shard_model(model, preset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = prec.setup(model, opt)
    return model, opt, prec


def rank_main(args) -> None:
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=args.init, rank=rank, world_size=world)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    rows = {}
    for preset in PRESETS:
        model, opt, prec = build(args.model, preset, sharded=True)
        one_step(model, prec, opt, args.imgsz)
        rows[preset] = state_bytes(model, opt)
    gathered = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        Path(args.out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def launch(world: int, args, tmp: Path) -> list[dict]:
    out = tmp / f"world{world}.json"
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world)}
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--rank-main", "--model", args.model, "--imgsz", str(args.imgsz),
             "--init", f"file://{tmp}/store{world}", "--out", str(out)], env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"world size {world}: ranks exited with {codes}")
    return json.loads(out.read_text())


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="det-s.yaml")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--init", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main:
        rank_main(args)
        return

    from mixprec.hardware import describe_device

    info = describe_device("cpu")
    print(f"# {args.model}, AdamW, one step at {args.imgsz}px; torch {info['torch']}, {info['name']}, "
          f"{info['cores']} cores, gloo")
    print("| preset | setup | world | params MiB | master MiB | grads MiB | optimizer MiB | "
          "total per rank MiB | vs world 1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in PRESETS:
        model, opt, prec = build(args.model, preset, sharded=False)
        one_step(model, prec, opt, args.imgsz)
        b = state_bytes(model, opt)
        print(f"| {preset} | one process, no FSDP | 1 | {mib(b['params'])} | {mib(b['master'])} | "
              f"{mib(b['grads'])} | {mib(b['optimizer'])} | {mib(b['total'])} | |")
    with tempfile.TemporaryDirectory() as tmp:
        per_world = {w: launch(w, args, Path(tmp)) for w in args.worlds}
    base = per_world[min(args.worlds)]
    for preset in PRESETS:
        base_total = max(r[preset]["total"] for r in base)
        for world, ranks in per_world.items():
            worst = max(ranks, key=lambda r: r[preset]["total"])[preset]
            print(f"| {preset} | FSDP2 | {world} | {mib(worst['params'])} | {mib(worst['master'])} | "
                  f"{mib(worst['grads'])} | {mib(worst['optimizer'])} | {mib(worst['total'])} | "
                  f"{base_total / worst['total']:.2f}x smaller |")
    print("(per-rank figures are the largest rank's; FSDP2's sharded FP32 parameters are the master "
          "copy, so the master column is empty under FSDP2)")


if __name__ == "__main__":
    main()
