"""``DetectionDataset`` and ``build_dataloader``: YOLO-format images and labels to batches.

A batch is a dict: ``images`` uint8 (B, 3, S, S); ``targets`` FP32 (N, 6) rows
``[image_index, class, cx, cy, w, h]`` normalised to S; ``paths``; ``shapes`` (original
width, height); ``ratio_pad`` (scale, (left, top)) to map boxes back to the original image.
Augmentation of sample ``i`` in epoch ``e`` is drawn from ``numpy.random.default_rng([seed, e,
i])`` and shuffling from ``seed + e``, so a run (and a resumed run) is reproducible with any
number of workers.

``cache=True`` keeps every image decoded and resized to ``imgsz`` in RAM (Ultralytics'
``cache=ram``): that step is deterministic, so batches are identical with and without the cache;
only the repeated decode and resize are saved. ``build_dataloader(cache="auto")``, the default,
caches when the images fit in a fixed share of the free memory (``cache_fits``).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mixprec.vision.data import augment as A
from mixprec.vision.data.config import DataConfig, image_files, label_path
from mixprec.vision.data.labels import LabelIndex, scan

__all__ = ["AugmentConfig", "DetectionDataset", "EpochSampler", "FlushingDataLoader", "build_dataloader",
           "cache_fits", "collate"]

CACHE_MAX_BYTES = 4 << 30  # "auto" caches at most this much, and at most a quarter of free RAM


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (YOLO's defaults); ``mosaic``/``fliplr`` are probabilities."""

    mosaic: float = 1.0
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5


class DetectionDataset(Dataset):
    def __init__(self, index: LabelIndex, imgsz: int, augment: AugmentConfig | None = None,
                 seed: int = 0, cache: bool = False):
        if not index.images:
            raise ValueError("no usable images in this split (see the warnings above)")
        self.index, self.imgsz, self.aug, self.seed = index, imgsz, augment, seed
        self.epoch = 0
        self.mosaic_on = augment is not None and augment.mosaic > 0
        # image i decoded and resized to imgsz (read-only) with its original (w, h), or None
        self.cache: list[tuple[np.ndarray, tuple[int, int]] | None] | None = (
            [None] * len(index.images) if cache else None)

    def __len__(self) -> int:
        return len(self.index.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def close_mosaic(self) -> None:
        self.mosaic_on = False

    def _image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` resized to ``imgsz`` (long side) and its original (w, h); cached when the
        cache is on. The cached array is read-only: augmentation always writes to new arrays."""
        if self.cache is None:
            return A.load_resized(self.index.images[i], self.imgsz)
        hit = self.cache[i]
        if hit is None:
            img, shape = A.load_resized(self.index.images[i], self.imgsz)
            img = np.ascontiguousarray(img)
            img.flags.writeable = False
            hit = self.cache[i] = (img, shape)
        return hit

    def fill_cache(self, threads: int | None = None) -> None:
        """Decode every image into the cache now (before worker processes fork, so that each
        worker starts with the whole cache instead of refilling its own copy every epoch)."""
        if self.cache is None:
            return
        todo = [i for i, hit in enumerate(self.cache) if hit is None]
        threads = threads or min(8, os.cpu_count() or 1)
        if threads > 1 and len(todo) > 1:  # PIL decodes and resizes without the GIL
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(self._image, todo))
        else:
            for i in todo:
                self._image(i)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        img, (w0, h0) = self._image(i)
        lab = self.index.labels[i].copy()
        h, w = img.shape[:2]
        xyxy = np.zeros((len(lab), 5), np.float32)
        xyxy[:, 0] = lab[:, 0]
        xyxy[:, 1] = (lab[:, 1] - lab[:, 3] / 2) * w
        xyxy[:, 2] = (lab[:, 2] - lab[:, 4] / 2) * h
        xyxy[:, 3] = (lab[:, 1] + lab[:, 3] / 2) * w
        xyxy[:, 4] = (lab[:, 2] + lab[:, 4] / 2) * h
        return img, xyxy, (w0, h0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, aug = self.imgsz, self.aug
        if aug is None:
            img, lab, shape = self._load(i)
            out, r, pad = A.letterbox(img, s)
            lab[:, [1, 3]] = lab[:, [1, 3]] * r + pad[0]
            lab[:, [2, 4]] = lab[:, [2, 4]] * r + pad[1]
            # original px -> letterboxed px: x * ratio + pad
            ratio_pad = (max(img.shape[:2]) / max(shape) * r, pad)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if self.mosaic_on and rng.random() < aug.mosaic:
                picks = [i, *rng.integers(0, len(self), 3).tolist()]
                loaded = [self._load(j) for j in picks]
                img, lab = A.mosaic4([x[0] for x in loaded], [x[1] for x in loaded], s, rng)
                border_img = img
            else:
                img, lab, _ = self._load(i)
                border_img = A.letterbox(img, s)[0]
                h, w = img.shape[:2]
                lab[:, [1, 3]] += (s - w) // 2
                lab[:, [2, 4]] += (s - h) // 2
            out, lab = A.random_affine(border_img, lab, s, rng, aug.degrees, aug.translate,
                                       aug.scale)
            out = A.augment_hsv(out, rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
            if rng.random() < aug.fliplr:
                out, lab = A.fliplr(out, lab)
            shape, ratio_pad = (s, s), (1.0, (0.0, 0.0))
        n = len(lab)
        targets = torch.zeros(n, 6)
        if n:
            t = torch.from_numpy(lab)
            targets[:, 1] = t[:, 0]
            targets[:, 2] = (t[:, 1] + t[:, 3]) / 2 / s
            targets[:, 3] = (t[:, 2] + t[:, 4]) / 2 / s
            targets[:, 4] = (t[:, 3] - t[:, 1]) / s
            targets[:, 5] = (t[:, 4] - t[:, 2]) / s
        image = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        return {"image": image, "targets": targets, "path": str(self.index.images[i]), "index": i,
                "shape": shape, "ratio_pad": ratio_pad}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    targets = [s["targets"].clone() for s in samples]
    for i, t in enumerate(targets):
        t[:, 0] = i
    return {"images": torch.stack([s["image"] for s in samples]),
            "targets": torch.cat(targets, 0),
            "paths": [s["path"] for s in samples],
            "indices": [s["index"] for s in samples],
            "shapes": [s["shape"] for s in samples],
            "ratio_pad": [s["ratio_pad"] for s in samples]}


class EpochSampler(Sampler[int]):
    """Shuffled (seeded by ``seed + epoch``) or sequential indices."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def cache_fits(n_images: int, imgsz: int, max_bytes: int = CACHE_MAX_BYTES) -> bool:
    """Whether ``n_images`` resized to ``imgsz`` (at most imgsz^2 * 3 bytes each) fit in
    ``max_bytes`` and in a quarter of the memory the OS reports free (``max_bytes`` alone where
    it reports none)."""
    need = n_images * imgsz * imgsz * 3
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        free = 4 * max_bytes
    return need <= min(max_bytes, free // 4)


class FlushingDataLoader(DataLoader):
    """A DataLoader that flushes stdout/stderr before its worker processes fork: a forked worker
    inherits the unflushed buffer and would write those lines a second time when it exits (seen
    with stdout redirected to a file)."""

    def __iter__(self):
        if self.num_workers > 0:
            sys.stdout.flush()
            sys.stderr.flush()
        return super().__iter__()


def build_dataloader(data: DataConfig, split: str, imgsz: int, batch: int, train: bool,
                     workers: int = 0, seed: int = 0,
                     augment: AugmentConfig | None = None,
                     cache: bool | str = "auto") -> DataLoader:
    """A DataLoader over ``split`` ("train", "val" or "test") of ``data``. Training loaders
    shuffle and augment (``augment`` or YOLO's defaults); others letterbox only. Call
    ``set_epoch(e)`` on ``loader.dataset`` and ``loader.sampler`` before each epoch.
    ``cache``: True/"ram" keeps the resized images in RAM, False reads them every time, "auto"
    caches when ``cache_fits``. Batches are the same either way."""
    if split not in data.splits:
        raise ValueError(f"data YAML {data.yaml_path} has no '{split}' split")
    images = image_files(data.splits[split])
    if not images:
        raise ValueError(f"no images found for '{split}' in {data.splits[split]}")
    # not YOLO's "<labels>.cache" name, so both tools can share a dataset folder
    label_cache = label_path(images[0]).parent.with_suffix(".mixprec.cache")
    index = scan(images, data.nc, label_cache, prefix=f"{split}: ")
    if cache not in (True, False, "ram", "auto"):
        raise ValueError(f"cache={cache!r}: use True/'ram', False or 'auto'")
    use_cache = cache_fits(len(index.images), imgsz) if cache == "auto" else bool(cache)
    ds = DetectionDataset(index, imgsz, (augment or AugmentConfig()) if train else None, seed,
                          cache=use_cache)
    if use_cache and workers > 0:  # workers are forked each epoch: fill the cache before
        ds.fill_cache()
    sampler = EpochSampler(len(ds), shuffle=train, seed=seed)
    return FlushingDataLoader(ds, batch_size=min(batch, len(ds)), sampler=sampler,
                              num_workers=workers, collate_fn=collate, drop_last=False,
                              persistent_workers=False)
