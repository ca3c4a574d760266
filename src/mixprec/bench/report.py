"""Reports of a ``BenchResult``: the terminal table, ``bench.md``, PNG plots and ``bench.json``.

Plots are drawn with matplotlib's object API (``Figure`` + Agg canvas), so pyplot's global state
is never touched; every file is written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from mixprec.bench.memory import format_bytes
from mixprec.bench.result import BenchResult, BenchRow
from mixprec.io import atomic_write, atomic_write_text

__all__ = ["format_table", "save_plots", "save_report", "to_markdown"]

_COLUMNS = ("precision", "numerics", "step ms (med [min-max])", "samples/s", "speedup",
            "activations", "act x32", "total", "mem x32", "peak", "J/step", "max batch",
            "batch x32", "loss", "loss x32")


def _f(x: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{suffix}"


def _cells(row: BenchRow) -> list[str]:
    if row.status != "ok":
        return [row.precision, row.numerics, "FAILED", *["-"] * (len(_COLUMNS) - 3)]
    t = row.step_time or {}
    mem = row.memory or {}
    conv = row.convergence or {}
    lb = row.largest_batch or {}
    peak = mem.get("cuda_peak") if mem.get("cuda_peak") is not None else mem.get("peak_rss")
    peak_text = format_bytes(peak) + (" (alloc)" if mem.get("cuda_peak") is not None else " (RSS)")
    return [
        row.precision, row.numerics,
        f"{t['median'] * 1e3:.1f} [{t['min'] * 1e3:.1f}-{t['max'] * 1e3:.1f}]",
        _f(row.throughput, ".1f"), _f(row.speedup, ".2f", "x"),
        format_bytes(mem.get("activations")), _f(mem.get("activation_ratio"), ".2f", "x"),
        format_bytes(mem.get("total")), _f(mem.get("total_ratio"), ".2f", "x"), peak_text,
        _f(row.energy.get("joules_per_step"), ".3g"),
        "n/a" if lb.get("batch") is None else str(lb["batch"]),
        _f(lb.get("ratio"), ".2f", "x"),
        _f(conv.get("final_loss"), ".4g"), _f(conv.get("final_ratio"), ".3f", "x"),
    ]


def _notes(result: BenchResult) -> list[str]:
    lines = []
    for row in result.rows:
        if row.status != "ok":
            lines.append(f"{row.precision}: FAILED - {row.error}")
        for note in row.notes:
            lines.append(f"{row.precision}: {note}")
    first = next((r for r in result.rows if r.status == "ok"), None)
    if first is not None:
        if first.energy.get("joules_per_step") is None:
            lines.append(f"energy: n/a - {first.energy.get('reason')}")
        lb = first.largest_batch or {}
        if lb.get("batch") is None and lb.get("reason"):
            lines.append(f"largest batch: {lb['reason']}")
    lines.extend(f"config: {n}" for n in result.config.get("notes") or [])
    return lines


def format_table(result: BenchResult) -> str:
    """The result as a fixed-width text table followed by the notes (why a precision is slow,
    what is n/a and why)."""
    rows = [list(_COLUMNS), *[_cells(r) for r in result.rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    env = result.environment
    head = (f"mixprec bench: {result.config.get('model') or 'model'} on {env.get('name')} "
            f"({env.get('device')}), torch {env.get('torch')}, batch {result.config['batch_size']}, "
            f"{result.config['steps']} timed steps in {result.config['repeats']} rounds")
    notes = _notes(result)
    return "\n".join([head, *lines, *(["", "notes:"] + [f"  - {n}" for n in notes] if notes else [])])


def _env_lines(env: dict[str, Any]) -> list[str]:
    keys = ("device", "name", "torch", "cuda", "compute_capability", "cpu_capability",
            "cpu_flags", "cores", "memory_bytes", "python", "energy_source")
    out = []
    for k in keys:
        if env.get(k) is not None:
            v = env[k]
            v = ", ".join(v) if isinstance(v, list) else v
            out.append(f"| {k} | {v} |")
    return out


def to_markdown(result: BenchResult) -> str:
    """``bench.md``: environment, the table, the per-precision memory breakdown and notes."""
    md = ["# mixprec bench", "", f"Created {result.created}.", "", "## Environment", "",
          "| key | value |", "|---|---|", *_env_lines(result.environment), "",
          "## Config", "", "| key | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in result.config.items() if k != "notes"]
    md += ["", "## Results", "", "| " + " | ".join(_COLUMNS) + " |",
           "|" + "---|" * len(_COLUMNS)]
    md += ["| " + " | ".join(_cells(r)) + " |" for r in result.rows]
    parts = ("params", "buffers", "grads", "master", "optimizer_state", "activations", "casts",
             "batch", "total")
    md += ["", "## Memory breakdown (bytes, exact accounting)", "",
           "| precision | " + " | ".join(parts) + " |", "|" + "---|" * (len(parts) + 1)]
    for r in result.rows:
        if r.memory:
            md.append(f"| {r.precision} | " + " | ".join(str(r.memory[p]) for p in parts) + " |")
    notes = _notes(result)
    if notes:
        md += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    md += ["", "Step time: median, min and max over the timed rounds (device synchronised before "
           "each clock reading; precisions interleaved round by round). Memory: activations are "
           "the tensors autograd saves for backward (inputs excluded); 'casts' are autocast's "
           "weight copies; 'total' sums every part. Loss: the last step's loss, on identical "
           "data and seed; 'x32' columns are ratios to the 32 row.", ""]
    return "\n".join(md)


def _save_figure(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def save_plots(result: BenchResult, save_dir: str | os.PathLike) -> list[Path]:
    """``bench_speed_memory.png`` (speedup and memory-ratio bars) and ``bench_loss.png``
    (loss curve per precision) in ``save_dir``."""
    from matplotlib.figure import Figure

    save_dir = Path(save_dir)
    ok = [r for r in result.rows if r.status == "ok"]
    names = [r.precision for r in ok]
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3)
    series = [("speedup vs 32 (higher is faster)", [r.speedup or 0.0 for r in ok]),
              ("total memory / 32", [(r.memory or {}).get("total_ratio") or 0.0 for r in ok]),
              ("activations / 32", [(r.memory or {}).get("activation_ratio") or 0.0 for r in ok])]
    for ax, (title, values) in zip(axes, series, strict=True):
        bars = ax.bar(names, values, color=["#777777" if n == "32" else "#3b75af" for n in names])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"{result.config.get('model') or 'model'} on {result.environment.get('name')}",
                 fontsize=10)
    fig.tight_layout()
    paths = [_save_figure(fig, save_dir / "bench_speed_memory.png")]

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for r in ok:
        losses = (r.convergence or {}).get("losses") or []
        xs = [i for i, v in enumerate(losses) if v is not None]
        ax.plot(xs, [losses[i] for i in xs], label=r.precision, linewidth=1.2)
    ax.axvline(result.config.get("warmup", 0) - 0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("step (left of the dotted line: warm-up)")
    ax.set_ylabel("loss")
    ax.set_title("loss per precision (identical data and seed)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save_figure(fig, save_dir / "bench_loss.png"))
    return paths


def save_report(result: BenchResult, save_dir: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and (``plots``) the PNGs into ``save_dir``."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    out = {"json": save_dir / "bench.json", "md": save_dir / "bench.md"}
    result.save_json(out["json"])
    atomic_write_text(out["md"], to_markdown(result))
    if plots:
        speed, loss = save_plots(result, save_dir)
        out.update(speed_memory_png=speed, loss_png=loss)
    return out
