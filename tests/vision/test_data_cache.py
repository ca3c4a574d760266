"""The in-RAM image cache (``cache=True``/``"auto"``): batches are identical with and without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vision_helpers import make_tiny_dataset

from mixprec.vision.data import build_dataloader, load_data_config
from mixprec.vision.data.dataset import cache_fits


@pytest.fixture
def mixed_data(tmp_path):
    """The tiny dataset plus two non-square images (so resize and letterbox both do work)."""
    yaml_path = make_tiny_dataset(tmp_path / "tiny", n=6)
    root = yaml_path.parent
    for name, size in (("wide", (90, 50)), ("tall", (40, 100))):
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (*size[::-1], 3),
                                                                    dtype=np.uint8)).save(
            root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.4 0.3\n1 0.2 0.7 0.2 0.2\n")
    return load_data_config(yaml_path)


def _epochs(loader, epochs, mosaic_off_from=None):
    out = []
    for e in range(epochs):
        loader.dataset.set_epoch(e)
        loader.sampler.set_epoch(e)
        if mosaic_off_from is not None and e >= mosaic_off_from:
            loader.dataset.close_mosaic()
        out += list(loader)
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["images"], y["images"])
        assert torch.equal(x["targets"], y["targets"])
        assert x["paths"] == y["paths"] and x["shapes"] == y["shapes"]
        assert x["ratio_pad"] == y["ratio_pad"]


@pytest.mark.parametrize("imgsz", [64, 96])
def test_cached_and_uncached_train_batches_are_identical(mixed_data, imgsz):
    """Mosaic epochs, then plain (close_mosaic) epochs: same pixels and targets, bit for bit."""
    plain = build_dataloader(mixed_data, "train", imgsz, 3, True, cache=False)
    cached = build_dataloader(mixed_data, "train", imgsz, 3, True, cache=True)
    assert plain.dataset.cache is None and cached.dataset.cache is not None
    a, b = _epochs(plain, 3, mosaic_off_from=2), _epochs(cached, 3, mosaic_off_from=2)
    _assert_same(a, b)
    assert all(hit is not None for hit in cached.dataset.cache)
    # a second pass over the filled cache still gives the same batches
    cached.dataset.mosaic_on = True
    _assert_same(_epochs(cached, 3, mosaic_off_from=2)[:1], a[:1])


def test_cached_and_uncached_val_batches_are_identical(mixed_data):
    plain = build_dataloader(mixed_data, "val", 96, 4, False, cache=False)
    cached = build_dataloader(mixed_data, "val", 96, 4, False, cache="ram")
    _assert_same(list(plain), list(cached))
    _assert_same(list(plain), list(cached))  # served from the cache this time


def test_cache_is_read_only_and_filled_before_workers_fork(mixed_data):
    loader = build_dataloader(mixed_data, "train", 96, 4, True, workers=1, cache=True)
    cache = loader.dataset.cache
    assert all(hit is not None for hit in cache)  # filled in the parent: workers inherit it
    img, shape = cache[0]
    assert not img.flags.writeable and max(img.shape[:2]) == 96 and shape == (64, 64)
    _assert_same(_epochs(loader, 2), _epochs(build_dataloader(mixed_data, "train", 96, 4, True,
                                                              cache=False), 2))


def test_fill_cache_with_threads_matches_lazy_fill(mixed_data):
    lazy = build_dataloader(mixed_data, "train", 96, 4, True, cache=True).dataset
    eager = build_dataloader(mixed_data, "train", 96, 4, True, cache=True).dataset
    eager.fill_cache(threads=3)
    for i in range(len(lazy)):
        a, b = lazy._image(i), eager.cache[i]
        assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_auto_cache_follows_the_memory_estimate(mixed_data):
    assert build_dataloader(mixed_data, "train", 64, 4, True).dataset.cache is not None  # "auto"
    assert cache_fits(1000, 160) and not cache_fits(1000, 160, max_bytes=1000 * 160 * 160 * 3 - 1)
    with pytest.raises(ValueError, match="cache="):
        build_dataloader(mixed_data, "train", 64, 4, True, cache="disk")
