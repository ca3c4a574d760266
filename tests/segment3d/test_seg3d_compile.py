"""compile=True on the 3D U-Net: the loss (Dice + CE) compiles too, under a master policy the
precision hooks run inside the compiled module, and the numerics are eager mode's. The fast test
uses the counting backend (``counting_compile``, tests/conftest.py); the ``slow`` ones compile
with inductor (C++ on CPU) and compare losses with eager mode within stated tolerances."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixprec.io import load_checkpoint
from mixprec.vision.trainer import train

TINY = str(Path(__file__).with_name("unet3d-t.yaml"))


def _losses(**kwargs) -> tuple[list[list[float]], object]:
    seen: list[list[float]] = []
    result = train(callbacks={"on_batch_end": lambda st, _b: seen.append(list(st.last_losses.values()))},
                   **kwargs)
    return seen, result


def _common(data: Path, amp: object, iterations: int = 2) -> dict:
    return dict(model=TINY, data=str(data), patch=16, batch=2, iterations=iterations, epochs=1, amp=amp,
                verbose=False, plots=False)


def test_the_loss_compiles_too_under_a_master_policy(tiny_organs, tmp_path, counting_compile, capsys):
    # bf16-master: Precision casts the weights to BF16 and hooks input/output casts on the model;
    # the compiled module runs them; the loss compiles with fullgraph=True (no graph break)
    eager, _ = _losses(project=str(tmp_path / "eager"), **_common(tiny_organs, "bf16-master"))
    comp, run = _losses(project=str(tmp_path / "comp"), compile=True, **_common(tiny_organs, "bf16-master"))
    assert "compiled the model forward and the loss for 1 batch shape(s)" in capsys.readouterr().out
    assert comp == eager and len(comp) == 2
    names = [" ".join(g) for g in counting_compile.graphs]
    assert sum("cross_entropy" in g for g in names) == 1, names  # one loss graph
    assert sum("conv3d" in g for g in names) == 1, names  # one forward graph
    # every graph: compiled during the warm-up, then called once per training batch (2)
    assert counting_compile.calls == 3 * len(names)
    ckpt = load_checkpoint(run.last)
    assert not any("_orig_mod" in k for k in ckpt["train"]["model"])
    assert ckpt["args"]["compile"] is True


@pytest.mark.slow
@pytest.mark.parametrize(("amp", "rtol"), [(False, 1e-4), ("bf16-mixed", 3e-2)])
def test_inductor_losses_match_eager(tiny_organs, tmp_path, amp, rtol):
    # FP32: inductor fuses and reorders FP32 sums, so losses agree to ~1e-5 relative after 4 steps
    # (1e-4 stated); bf16-mixed: fused kernels round BF16 intermediates at other points than
    # eager autocast (3e-2 stated, a few BF16 ulps of the loss)
    torch._dynamo.reset()
    eager, _ = _losses(project=str(tmp_path / "eager"), **_common(tiny_organs, amp, 4))
    comp, _ = _losses(project=str(tmp_path / "comp"), compile=True, **_common(tiny_organs, amp, 4))
    torch._dynamo.reset()
    assert len(comp) == len(eager) == 4
    torch.testing.assert_close(torch.tensor(comp), torch.tensor(eager), rtol=rtol, atol=1e-6)


def test_a_compiled_run_resumes_exactly_and_may_switch_compile_off(tiny_organs, tmp_path, counting_compile):
    # eager run of 2 epochs vs a compiled run cut after epoch 1 and resumed eagerly (compile is
    # one of the keys a resume may change): same weights, same losses
    common = dict(project=str(tmp_path), **{**_common(tiny_organs, False), "epochs": 2})
    full = train(name="full", **common)

    def stop_after_first_epoch(state, epoch):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(name="cut", compile=True, callbacks={"on_epoch_end": stop_after_first_epoch}, **common)
    assert counting_compile.calls > 0
    resumed = train(resume=str(tmp_path / "cut" / "weights" / "last.pt"), compile=False, verbose=False)
    a, b = load_checkpoint(full.last), load_checkpoint(resumed.last)
    assert list(a["train"]["model"]) == list(b["train"]["model"])
    for k, v in a["train"]["model"].items():
        assert torch.equal(v, b["train"]["model"][k]), k
    assert b["args"]["compile"] is False
