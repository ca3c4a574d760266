"""The summary of a ``benchmarks/gpu.sh`` run: reads ``$OUT/gemm.json``, ``$OUT/bench/<model>/bench.json``
and ``$OUT/steps.tsv``, writes ``$OUT/summary.md`` and ``$OUT/summary.json`` and prints the markdown.

    python benchmarks/gpu_summary.py OUT --models det-n,det-s,unet3d-n,unet3d-s \\
        --precisions 32,bf16-mixed,16-mixed,16-master

Per model and precision: the median step time, the speedup over ``32`` (measured in the same
``mixprec bench`` run), samples/s, the energy per step (NVML's total-energy counter, through
``mixprec bench``; ``n/a`` with the reason otherwise) and the peak memory. A model whose bench
did not finish (time limit, error) is listed as missing with its step's exit status.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _steps(out: Path) -> dict[str, dict[str, str]]:
    path = out / "steps.tsv"
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines()[1:]:
        name, status, seconds = [*line.split("\t"), "", ""][:3]
        rows[name] = {"status": status, "seconds": seconds}
    return rows


def _fmt(x: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:{spec}}{unit}"


def summarise(out: Path, models: list[str], precisions: list[str]) -> tuple[dict, str]:
    steps = _steps(out)
    summary: dict = {"steps": steps, "gemm": None, "bench": {}}
    lines = [f"# GPU check ({out})", ""]
    gemm_path = out / "gemm.json"
    if gemm_path.is_file():
        gemm = json.loads(gemm_path.read_text())
        summary["gemm"] = gemm
        lines += [f"GEMM on {gemm['device']} (torch {gemm['torch']}):", "",
                  "| dtype | n | TFLOP/s | peak | share of peak |", "|---|---|---|---|---|"]
        for r in gemm["rows"]:
            lines.append(f"| {r['dtype']} | {r['n']} | {_fmt(r['tflops'], '.3g')} | "
                         f"{_fmt(r['peak_tflops'], '.1f')} | {_fmt(r['share_of_peak'], '.0%')} |")
    else:
        lines.append(f"GEMM: missing ({steps.get('gemm', {}).get('status', 'not run')})")
    lines += ["", "| model | precision | status | step ms | speedup vs 32 | samples/s | J/step | "
              "peak memory |", "|---|---|---|---|---|---|---|---|"]
    for model in models:
        path = out / "bench" / model / "bench.json"
        if not path.is_file():
            status = steps.get(f"bench-{model}", {}).get("status", "not run")
            lines.append(f"| {model} | - | missing ({status}) | | | | | |")
            summary["bench"][model] = None
            continue
        data = json.loads(path.read_text())
        rows = {r["precision"]: r for r in data["rows"]}
        summary["bench"][model] = {}
        for prec in precisions:
            r = rows.get(prec)
            if r is None:
                lines.append(f"| {model} | {prec} | missing | | | | | |")
                summary["bench"][model][prec] = None
                continue
            step = (r.get("step_time") or {}).get("median")
            energy = (r.get("energy") or {}).get("joules_per_step")
            mem = r.get("memory") or {}
            peak = mem.get("cuda_peak") or mem.get("peak_rss")
            row = {"status": r["status"], "step_ms": None if step is None else 1000 * step,
                   "speedup": r.get("speedup"), "throughput": r.get("throughput"),
                   "joules_per_step": energy, "energy_reason": (r.get("energy") or {}).get("reason"),
                   "peak_bytes": peak}
            summary["bench"][model][prec] = row
            lines.append(f"| {model} | {prec} | {r['status']} | {_fmt(row['step_ms'], '.2f')} | "
                         f"{_fmt(row['speedup'], '.2f', 'x')} | {_fmt(row['throughput'], '.1f')} | "
                         f"{_fmt(energy, '.3g')} | "
                         f"{_fmt(None if peak is None else peak / 2**20, '.0f', ' MiB')} |")
    reasons = {r["energy_reason"] for m in summary["bench"].values() if m for r in m.values()
               if r and r["energy_reason"]}
    if reasons:
        lines += ["", "energy n/a: " + "; ".join(sorted(reasons))]
    tests = out / "pytest-cuda.txt"
    if tests.is_file():
        tail = [ln for ln in tests.read_text().splitlines() if ln.strip()]
        summary["pytest_cuda"] = tail[-1] if tail else ""
        lines += ["", f"pytest -m cuda: {summary['pytest_cuda']}"]
    lines += ["", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in steps.items()]
    return summary, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", default="det-n,det-s,unet3d-n,unet3d-s")
    ap.add_argument("--precisions", default="32,bf16-mixed,16-mixed,16-master")
    args = ap.parse_args(argv)
    summary, text = summarise(args.out, args.models.split(","), args.precisions.split(","))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
