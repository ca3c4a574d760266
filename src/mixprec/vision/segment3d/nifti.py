"""NIfTI volumes through nibabel, keeping the affine and the voxel spacing.

Arrays stay in nibabel's voxel order (x, y, z). Images come back channel-first ``(C, x, y, z)``
float32 (a 4D NIfTI is channel-last, as the Medical Segmentation Decathlon stores multi-modal
cases); label maps are ``(x, y, z)`` int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mixprec.io import atomic_write

__all__ = ["NIFTI_SUFFIXES", "UnreadableVolumeError", "Volume", "is_nifti", "read_image", "read_label",
           "write_nifti"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class UnreadableVolumeError(ValueError):
    """A file that nibabel cannot read as a 3D or 4D NIfTI volume."""


@dataclass(frozen=True)
class Volume:
    """``array``: image ``(C, x, y, z)`` float32 or label ``(x, y, z)`` int64; ``affine``: the
    4x4 voxel-to-world matrix (float64); ``spacing``: voxel size in mm along x, y, z."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[-3:])  # type: ignore[return-value]


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    if not path.is_file():
        raise UnreadableVolumeError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for a corrupt file
        raise UnreadableVolumeError(f"{path}: not a readable NIfTI file ({type(err).__name__}: "
                                    f"{err}); re-export it as .nii.gz") from err
    if data.ndim not in (3, 4):
        raise UnreadableVolumeError(f"{path}: expected a 3D volume or a 4D channel-last volume, got "
                                    f"shape {data.shape}")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, np.asarray(img.affine, dtype=np.float64), spacing  # type: ignore[return-value]


def read_image(path: str | Path) -> Volume:
    """An image volume as ``(C, x, y, z)`` float32 (C = 1 for a 3D file, the 4th axis of a 4D
    file otherwise)."""
    data, affine, spacing = _load(Path(path))
    arr = np.asarray(data, dtype=np.float32)
    arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)
    return Volume(np.ascontiguousarray(arr), affine, spacing)


def read_label(path: str | Path) -> tuple[Volume, np.ndarray]:
    """A label map as ``(x, y, z)`` int64, plus the raw values (for the integer check). A 4D file
    with one channel is accepted; more channels raise UnreadableVolumeError."""
    data, affine, spacing = _load(Path(path))
    raw = np.asarray(data)
    if raw.ndim == 4:
        if raw.shape[-1] != 1:
            raise UnreadableVolumeError(f"{path}: a label map must be 3D, got shape {raw.shape}")
        raw = raw[..., 0]
    return Volume(raw.astype(np.int64), affine, spacing), raw


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (3D, or channel-first 4D written channel-last) with ``affine``, atomically;
    the suffix picks compression (``.nii.gz``) or not (``.nii``)."""
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: a NIfTI path must end in .nii.gz or .nii")
    arr = np.moveaxis(array, 0, -1) if array.ndim == 4 else array
    img = nib.Nifti1Image(np.ascontiguousarray(arr), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    blob = img.to_bytes() if not str(path).endswith(".gz") else None
    if blob is None:
        import gzip

        blob = gzip.compress(img.to_bytes(), compresslevel=4, mtime=0)
    return atomic_write(path, lambda f: f.write(blob))
