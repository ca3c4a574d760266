"""Random training patches with foreground oversampling, and their augmentation.

``PatchSampler(cases, patch, batch, seed)``: batch ``i`` of epoch ``e`` is a pure function of
``(seed, e, i)`` -- resuming mid-run draws the same patches. Every third patch of the stream
(global index ``k % 3 == 2``) is centred on a foreground voxel (a class chosen uniformly among
those present, then a voxel of it), the rest are uniform random, so 1/3 of the patches are
foreground-centred, as nnU-Net's ``oversample_foreground_percent=0.33``. Volumes smaller than
the patch are zero-padded (image) / background-padded (label).

``augment(x, y, gen)``: per sample, random flips on each axis (p=0.5), a random rot90 in the
(x, y) plane when those patch sides are equal, and intensity jitter (a gain in [0.75, 1.25],
an offset in [-0.1, 0.1] and Gaussian noise with std up to 0.1, each with p=0.5) -- on the
batch's device, drawn from ``gen`` (a ``torch.Generator``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mixprec.vision.segment3d.dataset import LoadedCase

__all__ = ["FG_EVERY", "EpochSampler", "PatchDataset", "PatchSampler", "augment", "crop", "patch_loader"]

FG_EVERY = 3  # patch k is foreground-centred when k % FG_EVERY == FG_EVERY - 1


def crop(array: np.ndarray, start: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    """``array[..., start:start+patch]`` over the last 3 axes, zero-padded where it leaves the
    volume (``start`` may be negative)."""
    spatial = np.array(array.shape[-3:])
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.array(patch), spatial)
    out = np.zeros((*array.shape[:-3], *patch), dtype=array.dtype)
    src = array[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    o = lo - start
    out[..., o[0]:o[0] + src.shape[-3], o[1]:o[1] + src.shape[-2], o[2]:o[2] + src.shape[-1]] = src
    return out


class PatchSampler:
    """Batches ``(image (B, C, *patch) float32, label (B, *patch) int64)`` of random patches."""

    def __init__(self, cases: list[LoadedCase], patch: tuple[int, int, int], batch: int,
                 iterations: int, seed: int = 0):
        if any(c.label is None for c in cases):
            raise ValueError("PatchSampler needs labelled cases")
        if batch < 1 or iterations < 1:
            raise ValueError(f"batch={batch} and iterations={iterations} must be >= 1")
        self.cases, self.patch, self.batch = cases, tuple(patch), batch
        self.iterations, self.seed = iterations, seed

    def __len__(self) -> int:
        return self.iterations

    def start_for(self, case: LoadedCase, rng: np.random.Generator, foreground: bool) -> np.ndarray:
        """Patch start (may be negative where the volume is smaller than the patch)."""
        spatial, patch = np.array(case.image.shape[1:]), np.array(self.patch)
        if foreground and case.fg_voxels:
            classes = sorted(case.fg_voxels)
            voxels = case.fg_voxels[classes[int(rng.integers(len(classes)))]]
            centre = voxels[int(rng.integers(len(voxels)))]
            start = centre - patch // 2
            return np.clip(start, np.minimum(spatial - patch, 0), np.maximum(spatial - patch, 0))
        hi = np.maximum(spatial - patch, 0)
        start = np.array([int(rng.integers(h + 1)) for h in hi])
        return start + np.minimum(spatial - patch, 0) // 2  # centre a too-small volume

    def batch_at(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch, i])
        images, labels = [], []
        for j in range(self.batch):
            k = i * self.batch + j
            case = self.cases[int(rng.integers(len(self.cases)))]
            assert case.label is not None
            start = self.start_for(case, rng, foreground=k % FG_EVERY == FG_EVERY - 1)
            images.append(crop(case.image, start, self.patch))
            labels.append(crop(case.label, start, self.patch))
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.iterations):
            yield self.batch_at(epoch, i)


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
            intensity: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial (flips, rot90 in x-y) and (if ``intensity``) intensity augmentation of ``x``
    (B, C, X, Y, Z) and ``y`` (B, X, Y, Z), per sample; random numbers from ``gen`` (a CPU
    generator: the same draws whether or not ``intensity`` is on)."""
    xs, ys = [], []
    square = x.shape[2] == x.shape[3]
    for b in range(x.shape[0]):
        xi, yi = x[b], y[b]
        r = torch.rand(8, generator=gen).tolist()
        for axis in range(3):
            if r[axis] < 0.5:
                xi, yi = xi.flip(axis + 1), yi.flip(axis)
        if square:
            k = int(r[3] * 4)
            xi, yi = torch.rot90(xi, k, (1, 2)), torch.rot90(yi, k, (0, 1))
        noise = torch.rand(2, generator=gen).tolist()
        noise_seed = int(torch.randint(1 << 62, (1,), generator=gen))
        if intensity:
            if r[4] < 0.5:
                xi = xi * (0.75 + 0.5 * r[5])
            if r[6] < 0.5:
                xi = xi + (r[7] - 0.5) * 0.2
            if noise[0] < 0.5:
                g = torch.Generator(xi.device).manual_seed(noise_seed)
                xi = xi + 0.1 * noise[1] * torch.randn(xi.shape, generator=g, device=xi.device)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


class PatchDataset(Dataset):
    """Patch ``k`` of the epoch as ``(image (C, *patch) float32, label (*patch) int64)``, a pure
    function of ``(seed, epoch, k)``: the same in any worker and after a resume. Patch ``k`` is
    foreground-centred when ``k % 3 == 2``; ``augment`` applies ``augment`` per patch."""

    def __init__(self, cases: list[LoadedCase], patch: tuple[int, int, int], length: int,
                 seed: int = 0, augment: bool = True):
        self.sampler = PatchSampler(cases, patch, 1, 1, seed)
        self.length, self.seed, self.augment, self.epoch = length, seed, augment, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sampler
        rng = np.random.default_rng([self.seed, self.epoch, k])
        case = s.cases[int(rng.integers(len(s.cases)))]
        assert case.label is not None
        start = s.start_for(case, rng, foreground=k % FG_EVERY == FG_EVERY - 1)
        x = torch.from_numpy(crop(case.image, start, s.patch))
        y = torch.from_numpy(crop(case.label, start, s.patch).astype(np.int64))
        if self.augment:
            gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
            xa, ya = augment(x[None], y[None], gen)
            x, y = xa[0], ya[0]
        return x, y


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1`` in order (the dataset draws the randomness); ``set_epoch`` for the loop."""

    def __init__(self, n: int):
        self.n = n

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the dataset draws each epoch's patches from (seed, epoch, index)."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def patch_loader(cases: list[LoadedCase], patch: tuple[int, int, int], batch: int, iterations: int,
                 seed: int = 0, workers: int = 0, augment: bool = True) -> DataLoader:
    """``iterations`` batches of ``batch`` random patches per epoch (see ``PatchDataset``)."""
    ds = PatchDataset(cases, patch, iterations * batch, seed, augment)
    kwargs: dict[str, Any] = {"num_workers": workers}
    if workers > 0:
        kwargs["persistent_workers"] = False  # workers pick up set_epoch on each new epoch
    return DataLoader(ds, batch_size=batch, sampler=EpochSampler(len(ds)), drop_last=True, **kwargs)
