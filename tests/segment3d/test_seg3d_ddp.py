"""segment3d data-parallel: 2 CPU processes (gloo) train through the shared loop; each rank
trains on its own patches and the parameters stay equal across ranks after every epoch."""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "distributed"))
from dist_launch import run_ranks  # noqa: E402

TINY = str(HERE / "unet3d-t.yaml")


def test_two_rank_segment3d_training_keeps_the_ranks_in_sync(tiny_organs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run_ranks(HERE / "seg3d_ddp_rank.py", [tiny_organs, TINY, out], tmp_path)
    for epoch in (0, 1):
        r0, r1 = (torch.load(out / f"rank{r}-epoch{epoch}.pt", weights_only=True) for r in (0, 1))
        assert r0["steps"] == r1["steps"] == 2 * (epoch + 1)  # iterations=2 per epoch, nbs=batch
        assert set(r0["batches"]).isdisjoint(r1["batches"])  # each rank its own share of patches
        for k, v in r0["params"].items():
            assert torch.equal(v, r1["params"][k]), f"epoch {epoch}: {k} differs across ranks"
    first = torch.load(out / "rank0-epoch0.pt", weights_only=True)["params"]
    last = torch.load(out / "rank0-epoch1.pt", weights_only=True)["params"]
    assert any(not torch.equal(first[k], last[k]) for k in first)  # it trained
    rows = (out / "runs" / "train" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and sorted(p.name for p in (out / "runs").iterdir()) == ["train"]
