"""compile=True: the loop calls the compiled forward (and, for segment3d, the compiled loss),
the precision seam and the run's numerics are those of eager mode, checkpoints hold the plain
module's keys, and a compile failure or a bad value stops the run before the first step with
one line.

The fast tests use a counting ``torch.compile`` backend (a Python function that counts graphs
and calls and runs the traced graph as is): dynamo's tracing, guards and the loop's wiring are
real, inductor's C++ code generation is not. The ``slow`` tests compile with inductor and compare
the losses with eager mode within stated tolerances."""

from __future__ import annotations

import pytest
import torch
from vision_helpers import TINY_MODEL

import mixprec.vision.compiled as compiled
from mixprec.cli import main as cli_main
from mixprec.io import load_checkpoint
from mixprec.vision import Model
from mixprec.vision.trainer import train

DET = dict(model=TINY_MODEL, imgsz=64, batch=4, workers=0, verbose=False, epochs=2, val=False,
           plots=False, amp=False)


def _losses(**kwargs) -> tuple[list[list[float]], object]:
    seen: list[list[float]] = []
    result = train(callbacks={"on_batch_end": lambda st, _b: seen.append(list(st.last_losses.values()))},
                   **kwargs)
    return seen, result


def test_detect_loop_calls_the_compiled_forward_with_eager_numerics(tiny_data, tmp_path, counting_compile,
                                                                    capsys):
    # tiny_data: 8 images, batch 4 -> 2 batches per epoch, one batch shape (no remainder)
    eager, e_run = _losses(data=str(tiny_data), project=str(tmp_path / "eager"), **DET)
    comp, c_run = _losses(data=str(tiny_data), project=str(tmp_path / "comp"), compile=True, **DET)
    out = capsys.readouterr().out
    assert "compile: torch.compile (backend counting) compiled the model forward for 1 batch shape(s)" in out
    assert "the loss runs eagerly" in out
    # one graph (the forward: convolutions, no loss ops), compiled before the first step and
    # called once for the warm-up plus once per training batch (2 epochs x 2 batches)
    assert len(counting_compile.graphs) == 1
    ops = set(counting_compile.graphs[0])
    assert {"conv2d", "batch_norm", "silu"} <= ops and "binary_cross_entropy_with_logits" not in ops
    assert counting_compile.calls == 1 + 4
    # the traced graph runs the same ops: the same losses, and the warm-up left no trace
    # (BatchNorm statistics and the RNG restored) -> the same checkpoints
    assert comp == eager
    ce, cc = load_checkpoint(e_run.last), load_checkpoint(c_run.last)
    for part in (cc["model"]["state_dict"], cc["train"]["model"]):
        assert not any("_orig_mod" in k for k in part)
    assert list(cc["model"]["state_dict"]) == list(ce["model"]["state_dict"])  # EMA weights
    assert list(cc["train"]["model"]) == list(ce["train"]["model"])  # the trained model
    for k, v in ce["train"]["model"].items():  # BatchNorm statistics included
        assert torch.equal(cc["train"]["model"][k], v), k


@pytest.mark.parametrize("bad", ["yes", 1, "inductor", None])
def test_bad_compile_values_are_named(tiny_data, tmp_path, bad):
    with pytest.raises(ValueError, match=r"compile=.*use compile=True .* or compile=False"):
        train(data=str(tiny_data), project=str(tmp_path), compile=bad, **DET)


def test_model_api_and_cli_take_the_key(tiny_data, tmp_path, counting_compile, capsys, monkeypatch):
    Model(TINY_MODEL).train(data=str(tiny_data), project=str(tmp_path / "api"), compile=True,
                            **{k: v for k, v in DET.items() if k != "model"} | {"epochs": 1})
    assert counting_compile.calls == 1 + 2
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["train", f"model={TINY_MODEL}", f"data={tiny_data}", "compile=maybe", "epochs=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "compile='maybe': use compile=True" in err and "Traceback" not in err
    assert "compile" in "\n".join(Model(TINY_MODEL).task.train_keys())


def test_a_compile_failure_stops_before_the_first_step_with_one_line(tiny_data, tmp_path, monkeypatch,
                                                                     capsys):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found\nlong details that must not be printed")

    monkeypatch.setattr(compiled, "BACKEND", broken)
    torch._dynamo.reset()
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["train", f"model={TINY_MODEL}", f"data={tiny_data}", "compile=True", "epochs=1",
                   "imgsz=64", "batch=4", "workers=0", "amp=False", "verbose=False", "plots=False"])
    torch._dynamo.reset()
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "compile=True failed before the first step" in lines[0]
    assert "no C++ compiler found" in lines[0] and "long details" not in lines[0]
    assert "compile=False" in lines[0]
    assert not list(tmp_path.glob("runs/detect/*/weights/last.pt"))  # no epoch ran


def test_data_parallel_compile_is_refused_before_any_work(tiny_data, tmp_path):
    from mixprec.distributed.launch import DistContext
    from mixprec.vision.trainer import build

    args = Model(TINY_MODEL).task.train_keys()
    given = {k: v.default for k, v in args.items()} | DET | {"data": str(tiny_data),
                                                            "project": str(tmp_path), "compile": True}
    ctx = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"compile=True is not supported data-parallel yet .* compile=False"):
        build(given, dist=ctx)
    assert not (tmp_path / "train").exists()
