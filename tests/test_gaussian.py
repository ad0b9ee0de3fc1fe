"""The compiled Gaussian filter (chemozone.gaussian): scipy's values bit for bit, or scipy itself."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from chemozone import gaussian
from chemozone.gaussian import gaussian_filter, gaussian_weights


@settings(max_examples=120, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]),
       mode=st.sampled_from(["nearest", "constant"]), sigma=st.sampled_from([0.1, 0.5, 0.72, 1.0, 2.16, 3.3, 9.7]),
       scale=st.sampled_from([1e-3, 1.0, 1e5]), seed=st.integers(0, 2**16))
def test_equals_scipy_bit_for_bit(h, w, dtype, mode, sigma, scale, seed):
    """Any shape (also thinner than the kernel), both float dtypes and modes, kernels from 1 to 79 taps."""
    assert gaussian._kernels() is not None  # the compiled path is the one under test
    img = (np.random.default_rng(seed).normal(0, 1, (h, w)) * scale).astype(dtype)
    got, ref = gaussian_filter(img, sigma, mode=mode), ndi.gaussian_filter(img, sigma, mode=mode)
    assert got.dtype == ref.dtype and np.array_equal(got, ref)


def test_non_finite_values_and_a_segmentation_sized_tile():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 300.0, (700, 650)).astype(np.float32)
    img[5, 7], img[300, 2], img[699, 649] = np.nan, np.inf, -np.inf
    for sigma in (0.72, 2.16, 1.44):
        for mode in ("nearest", "constant"):
            assert np.array_equal(gaussian_filter(img, sigma, mode=mode), ndi.gaussian_filter(img, sigma, mode=mode),
                                  equal_nan=True)


def test_what_the_kernels_do_not_cover_goes_to_scipy(monkeypatch):
    """Other dtypes, modes and dimensions, a zero sigma, and ``CHEMOZONE_NO_NUMBA=1``: scipy's own result."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 1000, (30, 20)).astype(np.uint16)
    assert np.array_equal(gaussian_filter(img, 1.5), ndi.gaussian_filter(img, 1.5, mode="nearest"))
    f = img.astype(np.float32)
    assert np.array_equal(gaussian_filter(f, 1.5, mode="reflect"), ndi.gaussian_filter(f, 1.5, mode="reflect"))
    cube = rng.random((4, 9, 8))
    assert np.array_equal(gaussian_filter(cube, 1.0), ndi.gaussian_filter(cube, 1.0, mode="nearest"))
    out = gaussian_filter(f, 0.0)
    assert np.array_equal(out, f) and out is not f
    calls = []
    monkeypatch.setattr(ndi, "gaussian_filter", lambda *a, **k: calls.append(1) or np.zeros_like(a[0]))
    monkeypatch.setenv("CHEMOZONE_NO_NUMBA", "1")
    gaussian_filter(f, 1.5)
    assert calls == [1]
    monkeypatch.setenv("CHEMOZONE_NO_NUMBA", "")
    gaussian_filter(f, 1.5)
    assert calls == [1]  # the compiled kernels again


def test_weights_are_scipys_kernel():
    """The weights by distance are the right half of scipy's normalised kernel (radius int(4 sigma + 0.5))."""
    for sigma in (0.5, 1.0, 2.16):
        r = int(4 * sigma + 0.5)
        x = np.arange(-r, r + 1)
        k = np.exp(-0.5 / sigma**2 * x**2)
        k /= k.sum()
        assert np.allclose(gaussian_weights(sigma), k[r:], rtol=0, atol=1e-15)


def test_kernel_order_matters():
    """The check can fail: summing the taps nearest-first (not scipy's farthest-first) changes some values."""
    rng = np.random.default_rng(2)
    img = rng.normal(0, 1, (64, 64)) * 1e5
    w = gaussian_weights(3.3)
    mine = img * w[0]
    for j in range(1, len(w)):  # along axis 1 only, nearest tap first
        left = np.pad(img, ((0, 0), (j, 0)), mode="edge")[:, :-j]
        right = np.pad(img, ((0, 0), (0, j)), mode="edge")[:, j:]
        mine += (left + right) * w[j]
    assert not np.array_equal(mine, ndi.gaussian_filter1d(img, 3.3, axis=1, mode="nearest"))


@pytest.mark.parametrize("mode", ["nearest", "constant"])
def test_in_place_second_pass_on_a_wide_image(mode):
    """The second pass writes into the first pass's result row by row: rows wider than the kernel many times."""
    img = np.random.default_rng(4).random((5, 3000)).astype(np.float32)
    assert np.array_equal(gaussian_filter(img, 4.0, mode=mode), ndi.gaussian_filter(img, 4.0, mode=mode))
