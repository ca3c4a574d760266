"""Memory per precision for the det-n detector: exact accounting, side by side, in one run.

    .venv/bin/python benchmarks/memory_precision.py [--imgsz 640] [--batch 16] [--budget 4G]
        [--search-imgsz 64] [--search-budget 48M]

1. Persistent state (parameters, buffers, gradients, master copy, AdamW state) per precision,
   from one real step at a small image (these bytes do not depend on the image or batch size;
   the script checks that at two sizes). The step uses no loss scaler so it is always applied.
2. Activations (tensors saved for backward) and autocast weight casts, measured with
   ``SavedTensorMeter`` on a forward+loss at ``--imgsz`` for batch 1 and batch 2. Their
   difference is the exact per-image activation bytes; totals at ``--batch`` follow as
   ``casts + act(1) + (batch - 1) * per_image`` (a CNN's saved tensors grow linearly in the batch;
   the script prints both measured points so the linearity is visible).
3. Largest batch under ``--budget`` at ``--imgsz`` from those exact figures, and a direct
   ``largest_batch`` search (real forward probes) at ``--search-imgsz`` under ``--search-budget``.

Prints a table with ratios against 32 and the environment; no timing is involved.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mixprec.bench.autobatch import largest_batch, search_largest
from mixprec.bench.memory import SavedTensorMeter, format_bytes, state_bytes
from mixprec.bench.runner import parse_bytes
from mixprec.bench.step import TrainState, forward_loss, iter_tensors, train_step
from mixprec.hardware import describe_device
from mixprec.precision import Precision
from mixprec.vision.detect import DetectTask

PRECISIONS = ["32", "16-mixed", "bf16-mixed", "16-master", "bf16-master"]


def fresh_state(task, precision: str) -> TrainState:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = task.model_fn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prec = Precision(precision, device="cpu", scaler="none")
    model, optimizer = prec.setup(model, optimizer)
    return TrainState(model, optimizer, prec, torch.device("cpu"))


def static_bytes(task_small, precision: str) -> dict[str, int]:
    state = fresh_state(task_small, precision)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        x, t = task_small.batch_fn(2)
    train_step(state, x, t, task_small.loss_fn)
    return state_bytes(state.model, state.optimizer).as_dict()


def saved_bytes(task, precision: str, batch: int) -> tuple[int, int, int]:
    state = fresh_state(task, precision)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        x, t = task.batch_fn(batch)
    meter = SavedTensorMeter(state.model, exclude=list(iter_tensors((x, t))))
    with meter:
        loss = forward_loss(state, x, t, task.loss_fn)
    del loss
    data = x.untyped_storage().nbytes() + t.untyped_storage().nbytes()
    return meter.activation_bytes, meter.cast_bytes, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="det-n.yaml")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--budget", default="4G")
    ap.add_argument("--search-imgsz", type=int, default=64)
    ap.add_argument("--search-budget", default="48M")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    task = DetectTask().workload(args.model, args.imgsz)
    small = DetectTask().workload(args.model, 64)
    budget = int(parse_bytes(args.budget))
    env = describe_device("cpu")
    print(f"# {args.model} at {args.imgsz} px, batch {args.batch}; torch {env['torch']}, "
          f"{env['name']}, {env['cores']} cores, flags {','.join(env.get('cpu_flags', []))}")
    rows = {}
    t0 = time.time()
    for p in precisions:
        st = static_bytes(small, p)
        st2 = static_bytes(DetectTask().workload(args.model, 96), p)
        assert st == st2, f"state bytes depend on the image size? {st} vs {st2}"
        a1, c1, d1 = saved_bytes(task, p, 1)
        a2, c2, d2 = saved_bytes(task, p, 2)
        assert c2 == c1, "weight casts should not depend on the batch"
        per_image, data_per_image = a2 - a1, d2 - d1
        act = a1 + (args.batch - 1) * per_image
        data = d1 + (args.batch - 1) * data_per_image
        static = sum(st.values())
        total = static + act + c1 + data

        def fits(b, static=static, a1=a1, per_image=per_image, c1=c1, d1=d1, dpi=data_per_image):
            return static + a1 + (b - 1) * per_image + c1 + d1 + (b - 1) * dpi <= budget

        rows[p] = {"state": st, "act_b1": a1, "act_b2": a2, "casts": c1, "act": act,
                   "total": total, "batch_budget": search_largest(fits, max_batch=4096)}
        print(f"  {p}: measured ({time.time() - t0:.0f} s)", flush=True)
    base = rows["32"]
    head = (f"{'precision':12} {'params':>10} {'grads':>10} {'master':>10} {'optim':>10} "
            f"{'act b=1':>10} {'act b=2':>10} {'casts':>9} {f'act b={args.batch}':>11} "
            f"{'act x32':>7} {'total':>11} {'tot x32':>7} {'batch@' + args.budget:>9} {'x32':>5}")
    print(head)
    for p, r in rows.items():
        st = r["state"]
        print(f"{p:12} {format_bytes(st['params']):>10} {format_bytes(st['grads']):>10} "
              f"{format_bytes(st['master']):>10} {format_bytes(st['optimizer_state']):>10} "
              f"{format_bytes(r['act_b1']):>10} {format_bytes(r['act_b2']):>10} "
              f"{format_bytes(r['casts']):>9} {format_bytes(r['act']):>11} "
              f"{r['act'] / base['act']:>7.3f} {format_bytes(r['total']):>11} "
              f"{r['total'] / base['total']:>7.3f} {r['batch_budget']:>9} "
              f"{r['batch_budget'] / base['batch_budget']:>5.2f}")
    search_task = DetectTask().workload(args.model, args.search_imgsz)
    sbudget = int(parse_bytes(args.search_budget))
    print(f"# direct largest_batch search (accounted, real forward probes) at "
          f"{args.search_imgsz} px, budget {format_bytes(sbudget)}")
    found = {}
    for p in ("32", "16-mixed"):
        res = largest_batch(search_task.model_fn, search_task.batch_fn, search_task.loss_fn,
                            precision=p, device="cpu", budget_bytes=sbudget)
        found[p] = res.batch
        print(f"  {res.reason}", flush=True)
    print(f"  16-mixed / 32 largest batch: {found['16-mixed'] / found['32']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "rows": rows, "search": found, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
