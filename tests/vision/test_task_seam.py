"""The task seam: a task that is not detection trains through the same loop without touching
it -- its own run folder, keys, batches, loss terms and metric -- and train() leaves the
caller's RNG as it was."""

from __future__ import annotations

import csv
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from mixprec.keys import Key
from mixprec.vision.task import TASKS, Task, get_task, load_weights, task_for_model
from mixprec.vision.trainer import train


class _Ds(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"vec": self.x[i], "label": self.y[i]}

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class _Sampler(torch.utils.data.SequentialSampler):
    def set_epoch(self, epoch: int) -> None:
        pass


class ToyTask(Task):
    """Linear classification of 4-vectors: keys ``width`` (a task key) and ``patch`` (unused,
    standing for segment3d's size key); accuracy is the fitness."""

    name: ClassVar[str] = "toy"
    keys: ClassVar[dict[str, Key]] = {"model": Key("toy", "-"), "data": Key("toy", "-"),
                                      "width": Key(8, "hidden width"), "patch": Key(16, "-"),
                                      "epochs": Key(3, "toy default")}
    loss_names: ClassVar[tuple[str, ...]] = ("ce", "l2")
    fitness_name: ClassVar[str] = "accuracy"

    def load_data(self, args):
        return SimpleNamespace(names={0: "neg", 1: "pos"}, nc=2)

    def new_model(self, source, nc=None):
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, nc or 2))

    def build_model(self, args, data, model):
        return model if model is not None else self.new_model("toy", data.nc)

    def model_record(self, model):
        return {"task": self.name, "nc": 2}

    def model_from_record(self, record):
        return self.new_model("toy", record["nc"])

    def loaders(self, args, data, batch, world):
        def loader(ds):
            return torch.utils.data.DataLoader(ds, batch_size=batch // world, sampler=_Sampler(ds))
        return loader(_Ds(32, 0)), loader(_Ds(16, 1))

    def inputs(self, batch, device):
        return batch["vec"].to(device), batch["label"]

    def synthetic_batch(self, args, b, nc):
        return torch.randn(b, 4), torch.randint(0, nc, (b,))

    def build_loss(self, args, model):
        def loss_fn(out, y):
            out = out.float()
            ce = nn.functional.cross_entropy(out, y)
            l2 = 1e-3 * out.pow(2).mean()
            return ce + l2, torch.stack([ce, l2]).detach()
        return loss_fn

    def validate(self, model, loader, data, autocast, loss_fn, args, save_dir, final):
        right = n = 0
        with torch.no_grad():
            for b in loader:
                right += int((model(b["vec"]).argmax(1) == b["label"]).sum())
                n += len(b["label"])
        return SimpleNamespace(fitness=right / n)

    def metric_columns(self, metrics: Any):
        return {"metrics/accuracy": metrics.fitness if metrics else float("nan")}


def test_a_new_task_trains_through_the_shared_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "toy", f"{__name__}:ToyTask")  # the one registry line
    before = torch.get_rng_state()
    res = train(task=ToyTask(), project=str(tmp_path / "runs" / "toy"), amp=False, batch=8,
                nbs=8, workers=0, verbose=False, plots=False, optimizer="SGD", lr0=0.1)
    assert torch.equal(torch.get_rng_state(), before)  # seeded under fork_rng
    with open(res.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3  # the task's own default for epochs
    assert {"train/ce_loss", "train/l2_loss", "metrics/accuracy", "amp/scale"} <= set(rows[0])
    assert float(rows[-1]["train/ce_loss"]) < float(rows[0]["train/ce_loss"])
    assert (res.save_dir / "precision.yaml").is_file()
    model, ckpt = load_weights(res.best)  # rebuilt by the task the record names
    assert ckpt["model"]["task"] == "toy" and isinstance(model, nn.Sequential)
    assert task_for_model(res.best).name == "toy"
    assert res.metrics.fitness == pytest.approx(max(float(r["metrics/accuracy"]) for r in rows))


def test_task_keys_override_loop_defaults_and_unknown_keys_suggest():
    keys = ToyTask().train_keys()
    assert keys["epochs"].default == 3 and keys["project"].default == "runs/toy"
    assert "patch" in keys and "imgsz" not in keys
    with pytest.raises(ValueError, match="did you mean 'patch'"):
        train(task=ToyTask(), pach=8)


def test_tasks_are_found_by_model_and_by_name():
    assert get_task().name == "detect" and task_for_model("det-n.yaml").name == "detect"
    with pytest.raises(ValueError, match="use one of detect"):
        get_task("segment9d")


def test_under_torchrun_without_dist_train_says_what_to_pass(monkeypatch):
    import mixprec.distributed.launch as launch

    monkeypatch.setattr(launch, "launched_by_torchrun", lambda: True)
    with pytest.raises(ValueError, match="dist=mixprec.distributed.init_from_launcher"):
        train(task=ToyTask(), amp=False, verbose=False)


def test_one_precision_per_run_and_autobatch_gets_a_factory(monkeypatch, tmp_path):
    import mixprec.bench.autobatch as autobatch
    import mixprec.vision.trainer as trainer_mod
    from mixprec.precision import Precision

    built, given = [], {}

    def counting(*args, **kwargs):
        built.append(Precision(*args, **kwargs))
        return built[-1]

    def fake_largest(model, batch_fn, loss_fn, *, precision, **kwargs):
        given["precision"] = precision
        return SimpleNamespace(batch=4, budget_source="test")

    monkeypatch.setattr(trainer_mod, "Precision", counting)
    monkeypatch.setattr(autobatch, "largest_batch", fake_largest)
    st = trainer_mod.build(trainer_mod.check_keys({"batch": -1, "amp": "bf16-mixed", "verbose": False,
                                                   "project": str(tmp_path)},
                                                  ToyTask().train_keys(), "train"),
                           task=ToyTask(), save_dir=None)
    assert len(built) == 1 and st.prec is built[0]  # the run's one Precision
    probe = given["precision"]()  # autobatch builds its own, of the same policy, when it probes
    assert probe is not st.prec and str(probe.policy) == "bf16-mixed" and len(built) == 2


def test_precision_key_wins_over_the_amp_alias(tmp_path):
    import mixprec.vision.trainer as trainer_mod

    args = trainer_mod.check_keys({"amp": False, "precision": "bf16-master", "verbose": False,
                                   "project": str(tmp_path)}, ToyTask().train_keys(), "train")
    st = trainer_mod.build(args, task=ToyTask())
    assert str(st.prec.policy) == "bf16-master" and st.args["precision"] == "bf16-master"
    assert "precision=bf16-master: preset requested" in st.precision_reason
