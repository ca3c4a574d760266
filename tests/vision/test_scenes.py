"""The built-in 'dense' and 'occlusion' generators: deterministic, valid YOLO labels, and the
character each promises (many small objects; a wide size range with hidden parts)."""

from __future__ import annotations

import numpy as np

from mixprec.vision.data.scenes import DENSE_NAMES, OCCLUSION_NAMES, dense_image, occlusion_image


def _labels(make, n: int, seed: int) -> list:
    return [make(np.random.default_rng([seed, i]))[1] for i in range(n)]


def test_generators_are_deterministic():
    for make in (dense_image, occlusion_image):
        a_img, a_lab = make(np.random.default_rng([5, 3]))
        b_img, b_lab = make(np.random.default_rng([5, 3]))
        assert a_lab == b_lab and np.array_equal(np.asarray(a_img), np.asarray(b_img))


def test_dense_has_many_small_objects_with_valid_labels():
    labels = _labels(dense_image, 6, 1)
    counts = [len(lab) for lab in labels]
    assert min(counts) >= 12 and max(counts) <= 40
    rows = np.array([r for lab in labels for r in lab])
    assert set(rows[:, 0].astype(int)) <= set(range(len(DENSE_NAMES)))
    assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()
    sizes = rows[:, 3:].max(1) * 192  # long side of each box in pixels
    assert sizes.max() <= 30 and sizes.min() >= 5


def test_occlusion_spans_a_wide_size_range_with_valid_labels():
    labels = _labels(occlusion_image, 20, 2)
    rows = np.array([r for lab in labels for r in lab])
    assert set(rows[:, 0].astype(int)) <= set(range(len(OCCLUSION_NAMES)))
    assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()
    sizes = rows[:, 3:].max(1) * 256
    assert sizes.min() < 20 and sizes.max() > 150  # small and near-full-image objects
    # boxes may overlap (occlusion), unlike shapes' 40% rule: some pair covers > 40%
    def cover(a, b):
        ax1, ay1, ax2, ay2 = a[1] - a[3] / 2, a[2] - a[4] / 2, a[1] + a[3] / 2, a[2] + a[4] / 2
        bx1, by1, bx2, by2 = b[1] - b[3] / 2, b[2] - b[4] / 2, b[1] + b[3] / 2, b[2] + b[4] / 2
        inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
        return inter / (b[3] * b[4])
    assert any(cover(a, b) > 0.4 for lab in labels for a in lab for b in lab if a is not b)
