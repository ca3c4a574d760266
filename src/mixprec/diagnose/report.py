"""The doctor's report: terminal summary (worst offenders first), ``doctor.json``, ``doctor.md``
with histogram PNGs. Schema of ``doctor.json`` is documented in docs/doctor.md
(``"schema": "mixprec.doctor/1"``)."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mixprec.diagnose.advice import loss_scale_health, overflow_sources, recommendations
from mixprec.diagnose.locate import NonFiniteReport
from mixprec.diagnose.skips import SkipRecord
from mixprec.diagnose.stats import RangeSummary, _num
from mixprec.formats import FloatFormat
from mixprec.io import atomic_write_text

__all__ = ["SCHEMA", "DoctorReport", "build_report"]

SCHEMA = "mixprec.doctor/1"


def _total(summaries: list[RangeSummary | None]) -> RangeSummary | None:
    out = None
    for s in summaries:
        if s is not None:
            out = s if out is None else out.merge(s)
    return out


@dataclass
class DoctorReport:
    """Everything the doctor measured and concluded. ``modules``: ``ModuleStats`` per module;
    ``totals``: merged summaries (forward and activation gradients over leaf modules, weight
    gradients over all modules); ``skips``: ``SkipRecord`` per skipped step."""

    fmt: FloatFormat
    modules: list[Any]
    totals: dict[str, RangeSummary | None]
    skips: list[SkipRecord]
    scales: list[float | None]
    stepped: list[bool]
    health: dict[str, Any]
    recommendations: dict[str, Any]
    nan_locator: NonFiniteReport | None = None
    context: dict[str, Any] = field(default_factory=dict)

    # -- views ----------------------------------------------------------------------------------
    def module(self, name: str) -> Any:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module {name!r} in the report; modules: "
                       f"{', '.join(m.name for m in self.modules[:20])}")

    @property
    def overflow_sources(self) -> list[str]:
        return [m.name for m in overflow_sources(self.modules)]

    @property
    def act_grad_underflow_share(self) -> float | None:
        """Share of all activation-gradient elements (leaf modules) that flush to zero in the
        format without loss scaling (exact zeros excluded from the numerator)."""
        s = self.totals.get("act_grad")
        return s.share("underflow_1") if s else None

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        f = self.fmt
        mods = []
        for m in self.modules:
            mods.append({
                "name": m.name, "type": m.kind, "leaf": m.is_leaf,
                "forward": m.forward.to_dict(scaled=False) if m.forward else None,
                "act_grad": m.act_grad.to_dict(scaled=True) if m.act_grad else None,
                "weight_grad": m.weight_grad.to_dict(scaled=True) if m.weight_grad else None,
                "overflow_source_calls": m.source_calls,
                "first_overflow_order": m.first_source,
                "first_nonfinite_grad_order": m.first_bad_grad,
            })
        totals = {k: (v.to_dict(scaled=k != "forward") if v else None)
                  for k, v in self.totals.items()}
        known = [s for s in self.scales if s is not None]
        return {
            "schema": SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine()},
            **{k: v for k, v in self.context.items() if _jsonable(v)},
            "format": {"name": f.name, "max": f.max, "smallest_normal": f.smallest_normal,
                       "smallest_subnormal": f.smallest_subnormal},
            "steps": len(self.stepped), "skipped_steps": sum(1 for s in self.stepped if not s),
            "loss_scale": {"initial": known[0] if known else None,
                           "final": known[-1] if known else None,
                           "min": min(known) if known else None, "history": self.scales},
            "overflow_sources": self.overflow_sources,
            "totals": totals,
            "modules": mods,
            "skips": [r.to_dict() for r in self.skips],
            "nan_locator": self.nan_locator.to_dict() if self.nan_locator else None,
            "health": self.health,
            "recommendations": self.recommendations,
        }

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``doctor.json``, ``doctor.md`` and ``grad_hist.png`` into ``folder`` (atomic)."""
        from mixprec.diagnose.plots import plot_histograms

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / "doctor.json", "md": folder / "doctor.md",
                 "png": folder / "grad_hist.png"}
        scale = self.recommendations.get("init_scale") or {}
        plot_histograms([("activation gradients", self.totals.get("act_grad")),
                         ("weight gradients", self.totals.get("weight_grad")),
                         ("forward activations", self.totals.get("forward"))],
                        self.fmt, paths["png"], scale_log2=scale.get("log2"))
        atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=1, allow_nan=False,
                                                    default=_num) + "\n")
        atomic_write_text(paths["md"], self.markdown(paths["png"].name))
        return paths

    # -- text -----------------------------------------------------------------------------------
    def _lines(self, top: int) -> list[str]:
        f, L = self.fmt, []
        ctx = ", ".join(f"{k}={v}" for k, v in self.context.items() if isinstance(v, (str, int)))
        L.append(f"mixprec doctor: {len(self.stepped)} steps judged against {f.name} "
                 f"(max {f.max:g}, smallest subnormal {f.smallest_subnormal:.3g}){'; ' + ctx if ctx else ''}")
        leaves = [m for m in self.modules if m.is_leaf]
        L.append("")
        L.append("Forward overflow (worst first):")
        sources = overflow_sources(self.modules)
        ovf = sorted((m for m in self.modules if m.forward and (m.forward.counts["overflow_s"]
                                                                or m.forward.counts["nan"])),
                     key=lambda m: -(m.forward.share("overflow_s") + m.forward.share("nan")))
        for m in ovf[:top]:
            tag = "  <- SOURCE" if m in sources else ""
            L.append(f"  {m.name} ({m.kind}): max|x| {m.forward.max_abs:.3g}, "
                     f"overflow {_pct(m.forward.share('overflow_s'))}, "
                     f"NaN {_pct(m.forward.share('nan'))}{tag}")
        if not ovf:
            hr = [m.forward.headroom_bits()[0] for m in leaves if m.forward]
            hr = [h for h in hr if h is not None]
            L.append(f"  none; smallest headroom below max: {min(hr):.1f} powers of two" if hr
                     else "  none")
        for title, key in (("Activation gradients flushing to zero without loss scaling",
                            "act_grad"),
                           ("Weight gradients flushing to zero without loss scaling",
                            "weight_grad")):
            rows = [m for m in leaves if getattr(m, key)]
            if key == "weight_grad":
                rows = [m for m in self.modules if m.weight_grad]
            tot = self.totals.get(key)
            if tot is None:
                continue
            L.append("")
            L.append(f"{title}: {_pct(tot.share('underflow_1'))} of all elements "
                     f"({_pct(tot.share('zeros'))} already exactly zero); at the scale in use: "
                     f"{_pct(tot.share('underflow_s'))}")
            rows.sort(key=lambda m: -getattr(m, key).share("underflow_1"))
            for m in rows[:top]:
                s = getattr(m, key)
                if not s.counts["underflow_1"]:
                    break
                L.append(f"  {m.name} ({m.kind}): {_pct(s.share('underflow_1'))} unscaled, "
                         f"{_pct(s.share('underflow_s'))} at scale; subnormal "
                         f"{_pct(s.share('subnormal_1'))}; max|g| {s.max_abs_unscaled:.3g}")
        L.append("")
        h = self.health
        L.append(f"Skipped steps: {h['skipped']} of {h['steps']}; loss scale "
                 f"{_g(h['min_scale'])} (min) -> {_g(h['final_scale'])} (final)")
        for r in self.skips[:top]:
            where = f" in {', '.join(r.modules[:3])}" if r.modules else ""
            L.append(f"  step {r.step}: {r.cause}{where} (loss {r.loss}, scale {_g(r.scale)})")
        for flag in h["flags"]:
            L.append(f"  WARNING {flag['kind']}: {flag['message']}")
        if self.nan_locator is not None:
            L.append("")
            L.append("NaN locator:")
            L.extend("  " + line for line in self.nan_locator.describe().splitlines())
        L.append("")
        L.append("Recommendations:")
        rec = self.recommendations
        for k in rec["keep_fp32"]:
            L.append(f"  keep in FP32: {k['module']} ({k['type']}): {k['reason']}")
        s = rec["init_scale"]
        if s:
            L.append(f"  initial loss scale: 2**{s['log2']} = {s['value']:g} (max|grad| "
                     f"{s['max_abs_grad_unscaled']:.3g} x scale leaves "
                     f"{s['headroom_bits_at_scale']:.1f} powers of two below {f.max:g}, margin "
                     f"{s['margin_bits']}); activation gradients flushing to zero: "
                     f"{_pct(s['act_grad_underflow_share_unscaled'])} unscaled -> "
                     f"{_pct(s['act_grad_underflow_share_at_scale'])}"
                     + ("; CONFLICT: no scale clears both ends" if s["conflict"] else ""))
        b = rec["bf16"]
        if b["better"] is not None:
            L.append(f"  BF16 {'fits better' if b['better'] else 'not needed'}: {b['reason']}")
        return L

    def summary(self, top: int = 8) -> str:
        """Terminal summary, worst offenders first (``top`` rows per table)."""
        return "\n".join(self._lines(top))

    def markdown(self, image: str | None = "grad_hist.png") -> str:
        lines = ["# mixprec doctor report", ""]
        if image:
            lines += [f"![log2 |x| histograms]({image})", ""]
        lines += ["```", *self._lines(top=20), "```", "",
                  "## Per module (leaf modules, worst forward headroom first)", "",
                  "| module | type | fwd max\\|x\\| | fwd overflow | act-grad underflow "
                  "(unscaled / at scale) | w-grad underflow (unscaled / at scale) | "
                  "headroom above / below (bits) |",
                  "|---|---|---|---|---|---|---|"]
        leaves = [m for m in self.modules if m.is_leaf and m.forward]
        leaves.sort(key=lambda m: m.forward.headroom_bits()[0] if m.forward.headroom_bits()[0]
                    is not None else math.inf)
        for m in leaves:
            fw, ag, wg = m.forward, m.act_grad, m.weight_grad
            above, below = fw.headroom_bits()
            lines.append(
                f"| {m.name} | {m.kind} | {fw.max_abs:.3g} | {_pct(fw.share('overflow_s'))} | "
                f"{_pair(ag)} | {_pair(wg)} | {_g(above, '.1f')} / {_g(below, '.1f')} |")
        return "\n".join(lines) + "\n"


def _pair(s: RangeSummary | None) -> str:
    if s is None:
        return "-"
    return f"{_pct(s.share('underflow_1'))} / {_pct(s.share('underflow_s'))}"


def _pct(x: float) -> str:
    if x == 0:
        return "0%"
    return f"{100 * x:.3g}%"


def _g(v: float | None, spec: str = "g") -> str:
    return "-" if v is None else format(v, spec)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def build_report(tel: Any, *, nan_locator: NonFiniteReport | None = None, margin_bits: int = 3,
                 **context: Any) -> DoctorReport:
    """Assemble a ``DoctorReport`` from a ``Telemetry`` (host synchronisation: reads all totals)."""
    modules = tel.module_stats()
    leaves = [m for m in modules if m.is_leaf]
    totals = {"forward": _total([m.forward for m in leaves]),
              "act_grad": _total([m.act_grad for m in leaves]),
              "weight_grad": _total([m.weight_grad for m in modules])}
    skips = tel.skips.records if tel.skips else []
    scales = tel.skips.scales if tel.skips else []
    stepped = tel.skips.stepped if tel.skips else []
    health = loss_scale_health(scales, stepped, skips, tel.fmt,
                               sources=overflow_sources(modules))
    recs = recommendations(modules, totals["act_grad"], totals["weight_grad"], tel.fmt,
                           margin_bits=margin_bits)
    return DoctorReport(tel.fmt, modules, totals, skips, scales, stepped, health, recs,
                        nan_locator, context)
