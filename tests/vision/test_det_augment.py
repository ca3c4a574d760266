"""Colour jitter: the matrix form against its float reference and its defining properties."""

import numpy as np
import pytest

from mixprec.vision.data.augment import augment_hsv, colour_matrix


def _apply_float(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.clip(img.astype(np.float64) @ m.T, 0, 255)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


def test_identity_gains_leave_the_image_unchanged(image):
    out = augment_hsv(image, np.random.default_rng(1), hgain=0.0, sgain=0.0, vgain=0.0)
    np.testing.assert_array_equal(out, image)


def test_jitter_equals_the_rounded_float_matrix_product(image):
    # the same draws as augment_hsv makes: uniform(-1, 1, 3) * gains + (0, 1, 1)
    h, s, v = np.random.default_rng(7).uniform(-1, 1, 3) * (0.2, 0.7, 0.4) + (0, 1, 1)
    out = augment_hsv(image, np.random.default_rng(7), 0.2, 0.7, 0.4)
    ref = _apply_float(image, colour_matrix(h, s, v))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out - ref).max() <= 1.0  # Pillow rounds in float32: within one level


def test_third_of_a_turn_cycles_red_green_blue():
    m = colour_matrix(1 / 3, 1.0, 1.0)
    np.testing.assert_allclose(m @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)
    np.testing.assert_allclose(m @ [0, 0, 1.0], [1.0, 0, 0], atol=1e-12)


@pytest.mark.parametrize("hue", [-0.1, 0.013, 0.25])
def test_grey_stays_grey_and_value_scales_it(hue):
    grey = np.array([100.0, 100.0, 100.0])
    np.testing.assert_allclose(colour_matrix(hue, 1.6, 1.0) @ grey, grey, atol=1e-9)
    np.testing.assert_allclose(colour_matrix(hue, 0.4, 1.25) @ grey, 1.25 * grey, atol=1e-9)


def test_zero_saturation_gives_luma_grey(image):
    out = _apply_float(image, colour_matrix(0.0, 0.0, 1.0))
    luma = image.astype(np.float64) @ [0.299, 0.587, 0.114]
    for c in range(3):
        np.testing.assert_allclose(out[..., c], luma, atol=1e-9)
