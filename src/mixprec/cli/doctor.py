"""``mixprec doctor``: where FP16/BF16 overflows or underflows on a detector, and why steps skip.

``mixprec doctor model=det-n.yaml data=shapes8.yaml precision=16-mixed steps=50`` trains a copy
of the model for ``steps`` steps with telemetry on, prints the summary (worst offenders first)
and writes ``doctor.json``, ``doctor.md`` and ``grad_hist.png`` to ``runs/doctor/<name>``.
``precision=32 fmt=fp16`` asks what FP16 *would* do while computing in FP32 (fast on any CPU).
"""

from __future__ import annotations

from typing import Any

from mixprec._seed import seeded
from mixprec.io import increment_path
from mixprec.keys import Key

__all__ = ["KEYS", "SUMMARY", "run"]

SUMMARY = ("Find where FP16/BF16 overflows or underflows (per module), why steps were skipped, "
           "and what to change: modules to keep in FP32, an initial loss scale, BF16 or not.")

KEYS: dict[str, Key] = {
    "model": Key("det-n.yaml", "model YAML (det-n.yaml, det-s.yaml) or weights .pt"),
    "data": Key("shapes8.yaml", "dataset YAML (YOLO format; built-in shapes8 is generated locally)"),
    "precision": Key("16-mixed", "preset to run: 16-mixed, bf16-mixed, 16-master, 32, ...", "str"),
    "fmt": Key(None, "format to judge against (fp16, bf16, fp8_e4m3, fp8_e5m2); default: the "
                     "preset's compute dtype, fp16 for precision=32"),
    "emulate": Key(False, "emulate the preset's numerics in FP32 (mixprec.emulate)"),
    "steps": Key(50, "training steps to watch"),
    "batch": Key(8, "batch size"),
    "imgsz": Key(320, "image size (multiple of 32)"),
    "lr": Key(0.01, "SGD learning rate (momentum 0.9) of the watched steps"),
    "device": Key(None, "cpu, cuda, cuda:0 (default: cuda if available)"),
    "margin": Key(3, "powers of two kept clear of overflow by the recommended loss scale"),
    "locate": Key(True, "at the first skipped step, run the NaN locator on that batch"),
    "top": Key(8, "rows per table in the terminal summary"),
    "seed": Key(0, "random seed"),
    "workers": Key(0, "data-loading workers"),
    "datasets_dir": Key("datasets", "where built-in datasets are generated", "str"),
    "project": Key("runs/doctor", "output project folder", "str"),
    "name": Key("doctor", "run name (incremented: doctor, doctor2, ...)", "str"),
}


def _check(config: dict[str, Any]) -> None:
    """Fail fast, before building the model, on values that cannot work."""
    from mixprec.formats import get_format
    from mixprec.policy import Policy

    if str(config["precision"]).strip().lower() != "auto":
        Policy.parse(str(config["precision"]))
    if config["fmt"] is not None:
        get_format(str(config["fmt"]))
    for key in ("steps", "batch", "imgsz"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"{key}={config[key]!r}: give a positive integer")


def run(config: dict[str, Any]) -> int:
    from mixprec.diagnose.run import diagnose
    from mixprec.hardware import select_device
    from mixprec.vision.workloads import doctor_workload

    _check(config)  # a ValueError: one line on stderr, exit 2 (mixprec.cli.main)
    steps = int(config["steps"])
    with seeded(int(config["seed"]), select_device(config["device"])):
        model, batches, forward, device = doctor_workload(config)
        report = diagnose(model, batches, forward=forward, precision=config["precision"],
                          steps=steps, fmt=config["fmt"], lr=float(config["lr"]), device=device,
                          emulate=bool(config["emulate"]), locate=bool(config["locate"]),
                          margin_bits=int(config["margin"]), copy_model=False)
    report.context.update(model=str(config["model"]), data=str(config["data"]),
                          imgsz=int(config["imgsz"]), batch=int(config["batch"]))
    print(report.summary(top=int(config["top"])))
    out = increment_path(config["project"], config["name"])
    paths = report.save(out)
    print(f"\nreport: {paths['md']}  data: {paths['json']}  plot: {paths['png']}")
    return 0
