"""GEMM throughput per dtype against the card's datasheet peak (part of ``benchmarks/gpu.sh``).

    python benchmarks/gpu_gemm.py --out gemm.json [--device cuda] [--n 8192] [--reps 20]

For each of fp32 (TF32 off), tf32 (FP32 tensors, ``float32_matmul_precision('high')``), bf16 and
fp16: ``--reps`` timed ``n x n @ n x n`` matmuls after 3 warm-up ones (CUDA events on a GPU,
``perf_counter`` on a CPU), TFLOP/s = 2 n^3 / time, and the share of the card's dense peak when
the card is in ``PEAKS`` (NVIDIA datasheets, dense, no sparsity; else ``null``). Prints a
markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

#: dense peak TFLOP/s (fp32, tf32, bf16, fp16) from NVIDIA's datasheets; first match wins
PEAKS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("h200",), {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (("h100", "pcie"), {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (("h100",), {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (("a100",), {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    (("l40s",), {"fp32": 91.6, "tf32": 183.0, "bf16": 362.1, "fp16": 362.1}),
    (("l4",), {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    (("a10",), {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
)
DTYPES = ("fp32", "tf32", "bf16", "fp16")


def peaks_for(name: str) -> dict[str, float] | None:
    """The datasheet peaks of a device name (e.g. 'NVIDIA H200'), None when not in ``PEAKS``."""
    words = name.lower().replace("-", " ").split()
    for keys, peaks in PEAKS:
        if all(any(w == k or (len(k) > 3 and w.startswith(k)) for w in words) for k in keys):
            return peaks
    return None


def _time(fn, reps: int, device: torch.device) -> float:
    """Seconds per call of ``fn``, after 3 untimed calls."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def measure(device: torch.device, n: int, reps: int) -> list[dict]:
    """One row per dtype: seconds per GEMM and TFLOP/s."""
    rows = []
    before = torch.get_float32_matmul_precision()
    try:
        for name in DTYPES:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
            torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            out = torch.empty(n, n, device=device, dtype=dtype)
            sec = _time(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), reps, device)
            rows.append({"dtype": name, "n": n, "seconds": sec, "tflops": 2 * n ** 3 / sec / 1e12})
    finally:
        torch.set_float32_matmul_precision(before)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peaks = peaks_for(name) if device.type == "cuda" else None
    rows = measure(device, args.n, args.reps)
    for r in rows:
        r["peak_tflops"] = peaks[r["dtype"]] if peaks else None
        r["share_of_peak"] = r["tflops"] / peaks[r["dtype"]] if peaks else None
    print(f"GEMM {args.n}x{args.n}x{args.n} on {name} ({args.reps} reps; peaks: "
          f"{'NVIDIA datasheet, dense' if peaks else 'n/a (card not in the table)'})\n")
    print("| dtype | TFLOP/s | peak | share of peak |\n|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_tflops']:.1f}" if r["peak_tflops"] else "n/a"
        share = f"{r['share_of_peak']:.0%}" if r["share_of_peak"] is not None else "n/a"
        print(f"| {r['dtype']} | {r['tflops']:.3g} | {peak} | {share} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
