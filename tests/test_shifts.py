"""The shifts of `uqserve evaluate --shift`: identity at intensity 0, monotone intensities."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.shifts import CORRUPTIONS, ROTATION, SHIFTS, by_name, conditions


def images(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """Bright shapes on black, like digits and clothing: a random blob per image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, 3), np.float32)
    for k in range(n):
        top, left = rng.integers(6, size // 2, 2)
        out[k, top : top + size // 3, left : left + size // 4] = rng.uniform(120, 255)
    return out


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: s.name)
def test_intensity_zero_is_the_identity(shift):
    clean = images()
    np.testing.assert_array_equal(shift.apply(clean, 0, seed=1), clean)
    np.testing.assert_array_equal(shift.transform(clean, shift.clean, np.random.default_rng()),
                                  clean)  # fmt: skip


def test_rotation_by_zero_and_by_full_turns_is_the_identity():
    clean = images()
    for degrees in (0.0, 360.0):
        np.testing.assert_array_equal(ROTATION.transform(clean, degrees, None), clean)


def test_rotation_goes_from_0_to_180_degrees_in_at_least_7_steps():
    assert ROTATION.parameter(0) == 0.0
    assert ROTATION.levels[-1] == 180.0
    assert ROTATION.intensities + 1 >= 7


def test_rotation_by_180_is_a_point_reflection():
    clean = images(size=33)  # odd side: the centre is a pixel, the turn exact
    turned = ROTATION.transform(clean, 180.0, None)
    np.testing.assert_allclose(turned, clean[:, ::-1, ::-1], atol=1e-3)


@pytest.mark.parametrize("shift", CORRUPTIONS, ids=lambda s: s.name)
def test_corruptions_have_five_intensities_moving_further_each_step(shift):
    clean = images()
    assert shift.intensities == 5
    distance = [np.abs(shift.apply(clean, i, seed=3) - clean).mean() for i in range(6)]
    assert distance[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(distance)), distance


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: s.name)
def test_shifted_images_stay_pixels_of_the_same_shape(shift):
    clean = images()
    for intensity in range(1, shift.intensities + 1):
        moved = shift.apply(clean, intensity, seed=0)
        assert moved.shape == clean.shape and moved.dtype == np.float32
        assert moved.min() >= 0.0 and moved.max() <= 255.0


def test_noise_is_seeded():
    noise = by_name("gaussian_noise")
    clean = images()
    np.testing.assert_array_equal(noise.apply(clean, 3, seed=5), noise.apply(clean, 3, seed=5))
    assert not np.array_equal(noise.apply(clean, 3, seed=5), noise.apply(clean, 3, seed=6))


def test_conditions_full_and_quick():
    full = conditions()
    assert len(full) == ROTATION.intensities + 5 * len(CORRUPTIONS)
    quick = conditions(quick=True)
    assert {(s.name, i) for s, i in quick} < {(s.name, i) for s, i in full}
    assert ("rotation", 12) in {(s.name, i) for s, i in quick}


def test_bad_names_and_intensities_are_named():
    with pytest.raises(ValueError, match="Invalid value for `shift`"):
        by_name("fog")
    with pytest.raises(ValueError, match=r"Invalid value for `intensity`: expected 0\.\.5"):
        by_name("blur").parameter(6)
    with pytest.raises(ValueError, match=r"expected shape \(N, H, W, C\)"):
        by_name("blur").apply(np.zeros((4, 4)), 1, seed=0)
