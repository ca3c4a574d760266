"""Histograms of log2|x| against a format's range, written as PNG (matplotlib, no pyplot state)."""

from __future__ import annotations

import io
from pathlib import Path

from mixprec.diagnose.stats import HIST_MIN_EXP, RangeSummary
from mixprec.formats import FloatFormat
from mixprec.io import atomic_write

__all__ = ["plot_histograms"]


def plot_histograms(panels: list[tuple[str, RangeSummary | None]], fmt: FloatFormat,
                    path: str | Path, scale_log2: int | None = None) -> Path:
    """One panel per (title, summary): the share of elements per power of two (unscaled values),
    the exact-zero share as a bar at the left, and the format's limits: values left of the
    flush line become zero, between it and the normal line are subnormal, right of max overflow.
    ``scale_log2``: also draw, on gradient panels (title containing "grad"), where the flush
    line moves under that loss scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(t, s) for t, s in panels if s is not None and s.elements]
    fig = Figure(figsize=(9, 2.8 * max(1, len(panels))), dpi=100)
    FigureCanvasAgg(fig)
    flush = fmt.min_exponent - fmt.mantissa_bits - 1          # |x| <= 2**flush becomes 0
    for i, (title, s) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        n = s.elements
        xs = [HIST_MIN_EXP + j for j, v in enumerate(s.hist) if v]
        ys = [100 * v / n for v in s.hist if v]
        lo = min([*xs, flush]) - 4
        hi = max([*xs, int(fmt.max).bit_length()]) + 2
        ax.bar(xs, ys, width=1.0, align="edge", color="#4c72b0", label="share of elements")
        zero = 100 * s.counts["zeros"] / n
        ax.bar([lo], [zero], width=1.0, align="edge", color="#999999",
               label=f"exact zeros ({zero:.1f}%)")
        ax.axvspan(lo + 1, flush, color="#dd8452", alpha=0.15)
        ax.axvline(flush, color="#dd8452", lw=1.2,
                   label=f"{fmt.name} flush to zero (2**{flush})")
        ax.axvline(fmt.min_exponent, color="#55a868", lw=1.0, ls="--",
                   label=f"smallest normal (2**{fmt.min_exponent})")
        ax.axvline(int(fmt.max).bit_length(), color="#c44e52", lw=1.2,
                   label=f"max {fmt.max:g}")
        if scale_log2 and "grad" in title:
            ax.axvline(flush - scale_log2, color="#8172b2", lw=1.2, ls=":",
                       label=f"flush line at loss scale 2**{scale_log2}")
        under = 100 * s.counts["underflow_1"] / n if "underflow_1" in s.counts else 0.0
        ax.set_title(f"{title}: {under:.1f}% flush to zero unscaled", fontsize=10)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("log2 |x|")
        ax.set_ylabel("% of elements")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
