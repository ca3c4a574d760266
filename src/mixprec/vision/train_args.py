"""Checks of the train keys that ``check_keys`` (names only) cannot do: values, and what a resume
keeps. Each failure is one ``ValueError`` that repeats the bad value and says what is allowed."""

from __future__ import annotations

from typing import Any

from mixprec.vision.compiled import check_compile_value

__all__ = ["RESUME_OVERRIDES", "check_checkpoint", "check_train_values", "resume_args"]

# keys a resume takes from the command line; every other key comes from the checkpoint
RESUME_OVERRIDES = ("device", "workers", "verbose", "nan_recovery", "nan_action", "compile")


def _int(args: dict[str, Any], key: str, low: int) -> None:
    v = args[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{key}={v!r}: must be an integer >= {low}")


def check_train_values(args: dict[str, Any]) -> None:
    """Reject values no run can use (epochs < 1, a negative patience, ...)."""
    _int(args, "epochs", 1)
    _int(args, "workers", 0)
    _int(args, "nan_recovery", 0)
    if args["nan_action"] not in ("reload", "stop"):
        raise ValueError(f"nan_action={args['nan_action']!r}: use reload or stop")
    if "compile" in args:
        check_compile_value(args["compile"])
    for key in ("patience", "close_mosaic"):  # close_mosaic: detection's key
        if key in args:
            _int(args, key, 0)


def resume_args(given: dict[str, Any], saved: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a resumed run: the checkpoint's, with ``RESUME_OVERRIDES`` from
    ``given``. Prints one line naming the given keys a resume ignores: a resume continues the
    saved run as it was (to change them start a new run from the weights); ``model`` and
    ``project`` only serve to find the checkpoint."""
    keep = {k: v for k, v in saved.items() if k in keys}
    overrides = {k: given[k] for k in RESUME_OVERRIDES if k in given}
    ignored = [f"{k}={given[k]!r}" for k in given
               if k not in RESUME_OVERRIDES and k not in ("resume", "model", "project")
               and keep.get(k, keys[k].default if k in keys else None) != given[k]]
    if ignored:
        print(f"WARNING resume ignores {', '.join(ignored)}: a resumed run keeps its saved settings "
              f"(only {', '.join(RESUME_OVERRIDES)} can change); to change them start a new run "
              "with model=<last.pt>")
    return {**keep, **overrides, "resume": False}


def check_checkpoint(ckpt: Any, path: Any, resume: bool = False) -> dict[str, Any]:
    """``ckpt`` if it is a mixprec checkpoint (a model record with weights; with ``resume`` also
    the training state); else one ValueError naming the file and what is missing."""
    need = ("model", "train", "args", "epoch") if resume else ("model",)
    missing = [k for k in need if k not in ckpt] if isinstance(ckpt, dict) else list(need)
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not missing and not (isinstance(model, dict) and "state_dict" in model):
        missing = ["model/state_dict"]
    if missing:
        what = "resume from" if resume else "load"
        raise ValueError(f"{path} is not a mixprec checkpoint to {what} (missing {', '.join(missing)}): "
                         "use a weights/last.pt or best.pt written by mixprec train")
    return ckpt
