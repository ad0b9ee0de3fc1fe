"""The analysis grid (chemozone.grid): one definition used by every stage."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chemozone.grid import block_mean, cell_grid_index, grid_factor, grid_pixel_um, grid_shape, signed_distance


def test_factor_pixel_and_shape():
    assert grid_factor(0.5, 2.0) == 4 and grid_factor(0.497, 2.0) == 4 and grid_factor(4.0, 2.0) == 1
    assert grid_pixel_um(0.5, 2.0) == 2.0 and grid_pixel_um(4.0, 2.0) == 4.0
    assert grid_shape((10, 9), 4) == (3, 3)
    with pytest.raises(ValueError, match="must be > 0"):
        grid_factor(0.0, 2.0)
    with pytest.raises(ValueError, match="must be > 0"):
        grid_factor(0.5, -1.0)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 23), w=st.integers(1, 23), f=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_block_mean_equals_brute_force_numpy_dask_and_2d(h, w, f, seed):
    img = np.random.default_rng(seed).integers(0, 1000, (2, h, w)).astype(np.uint16)
    gh, gw = grid_shape((h, w), f)
    brute = np.array([[[img[c, i * f:(i + 1) * f, j * f:(j + 1) * f].mean() for j in range(gw)] for i in range(gh)]
                      for c in range(2)])
    np.testing.assert_array_equal(block_mean(img, f), brute)
    np.testing.assert_array_equal(block_mean(da.from_array(img, chunks=(1, 5, 7)), f), brute)
    np.testing.assert_array_equal(block_mean(img[1], f), brute[1])
    np.testing.assert_array_equal(block_mean(img, f, channel_indices=[1]), brute[1:])
    out32 = block_mean(img[0], f, dtype=np.float32)
    assert out32.dtype == np.float32 and np.array_equal(out32, brute[0].astype(np.float32))


def test_channel_means_on_a_cluster_equal_block_mean_and_keep_the_workers_two_channels_ahead():
    """Given a distributed client, the next two channels' sums are on the workers (computed or queued) while the
    caller holds this channel's means; each channel equals block_mean's; without a client, nothing is computed
    ahead."""
    from distributed import Client, LocalCluster

    from chemozone.grid import iter_channel_means

    img = np.random.default_rng(3).integers(0, 4000, (5, 203, 190)).astype(np.uint16)
    lazy = da.from_array(img, chunks=(1, 64, 64))
    ref = block_mean(img, 4)
    ahead = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        for k, (i, means) in enumerate(iter_channel_means(lazy, 4, [2, 0, 3, 1, 4], client=client)):
            ahead.append(set(client.futures))  # keys of the sums this client holds while the caller works
            assert i == [2, 0, 3, 1, 4][k]
            np.testing.assert_array_equal(means, ref[i])
    # 4 band tasks per channel: the next two channels' are there at each step (one new channel per step), nothing new
    # at the last two (a released key of the channel just gathered may linger: release is asynchronous)
    assert len(ahead[0]) >= 8 and len(ahead[1] - ahead[0]) == 4 and len(ahead[2] - ahead[1]) == 4
    assert not ahead[3] - ahead[2] and not ahead[4] - ahead[3]
    got = dict(iter_channel_means(lazy, 4, [1], dtype=np.float32))  # no client: computed when asked
    np.testing.assert_array_equal(got[1], ref[1].astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32"]),
       f=st.integers(1, 20), nby=st.integers(1, 4), nbx=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_block_sums_equal_numpys_reduction_at_the_extremes_of_each_dtype(dtype, f, nby, nbx, seed):
    """The strided integer sums (uint32 rows where they fit) equal numpy's int64 reduction, also at each dtype's
    extreme values (uint16 65535 × 20² blocks would overflow a uint32 row sum if the accumulator were chosen wrong)."""
    from chemozone.grid import _block_sums

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        img = rng.normal(0, 1e3, (2, nby * f, nbx * f)).astype(dt)
        acc = np.float64
    else:
        info = np.iinfo(dt)
        lo, hi = max(info.min, -2**40), min(info.max, 2**40)
        img = rng.choice(np.array([lo, hi, 0, 1], dtype=dt), (2, nby * f, nbx * f))
        acc = np.int64
    ref = img.reshape(2, nby, f, nbx, f).sum(axis=(2, 4), dtype=acc)
    got = _block_sums(img, f, acc)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_block_mean_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(Y, X\) or \(C, Y, X\)"):
        block_mean(np.zeros(5), 2)
    with pytest.raises(ValueError, match="channel_indices needs"):
        block_mean(np.zeros((4, 4)), 2, channel_indices=[0])


def test_cell_grid_index_floor_and_clip():
    cells = pd.DataFrame({"x_um": [0.0, 1.99, 2.0, -3.0, 1e6], "y_um": [0.0, 3.9, 4.0, 0.0, 1e6]})
    r, c = cell_grid_index(cells, grid_um=2.0, shape=(3, 3))
    assert r.tolist() == [0, 1, 2, 0, 2] and c.tolist() == [0, 0, 1, 0, 2]


def test_cell_grid_index_names_the_missing_step():
    from chemozone.errors import MissingStepError

    with pytest.raises(MissingStepError, match="no 'y_um' column; run quantification"):
        cell_grid_index(pd.DataFrame({"x_um": [1.0]}), grid_um=2.0, shape=(2, 2))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), g=st.sampled_from([1.0, 2.0, 3.5]))
def test_signed_distance_equals_brute_force(seed, g):
    mask = np.random.default_rng(seed).random((7, 9)) < 0.3
    if not mask.any() or mask.all():
        return
    yy, xx = np.mgrid[:7, :9]
    pts_in = np.stack([yy[mask], xx[mask]], 1)
    pts_out = np.stack([yy[~mask], xx[~mask]], 1)
    d = signed_distance(mask, grid_um=g)
    for (i, j), m in np.ndenumerate(mask):
        other = pts_out if m else pts_in
        nearest = np.sqrt(((other - [i, j]) ** 2).sum(1)).min() * g - g / 2
        assert d[i, j] == pytest.approx(-nearest if m else nearest)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(1, 9), (9, 1), (13, 17), (40, 23)]),
       p=st.sampled_from([0.02, 0.3, 0.9]), g=st.sampled_from([1.0, 2.0, 0.65]))
def test_banded_distances_are_scipys_bit_for_bit(monkeypatch_bands, seed, shape, p, g):
    """distance_um / signed_distance turn the feature transform into distances a few rows at a time (a whole
    section's grid is 10⁸ pixels): the values must be exactly scipy's ``distance_transform_edt``."""
    from scipy import ndimage as ndi

    from chemozone.grid import distance_um

    mask = np.random.default_rng(seed).random(shape) < p
    assert np.array_equal(distance_um(mask, grid_um=g), ndi.distance_transform_edt(mask, sampling=g))
    if mask.any() and not mask.all():
        d_out, d_in = ndi.distance_transform_edt(~mask, sampling=g), ndi.distance_transform_edt(mask, sampling=g)
        assert np.array_equal(signed_distance(mask, grid_um=g), np.where(mask, -(d_in - g / 2), d_out - g / 2))


@pytest.fixture(scope="module")
def monkeypatch_bands():
    from chemozone import grid

    old, grid._EDT_BAND_ROWS = grid._EDT_BAND_ROWS, 4  # several bands even on small masks
    yield
    grid._EDT_BAND_ROWS = old


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("g", [2.0, 0.65, 1.95, 0.4975])
def test_distances_of_structured_masks_are_scipys_bit_for_bit(monkeypatch, numba, g):
    """Blobs, lines, single pixels and a checkerboard (many equidistant candidates: the choice among them changes
    the last bit when the pixel size is not a power of two) give scipy's distances exactly, with the compiled
    column and row passes and with scipy's feature transform (``CHEMOZONE_NO_NUMBA=1``)."""
    from scipy import ndimage as ndi

    from chemozone import grid

    monkeypatch.setenv("CHEMOZONE_NO_NUMBA", "" if numba else "1")
    monkeypatch.setattr(grid, "_EDT_BAND_ROWS", 7)
    rng = np.random.default_rng(3)
    blobs = ndi.gaussian_filter(rng.random((150, 130)), 4) > 0.5
    lines = np.zeros((90, 120), bool)
    lines[40, :] = lines[:, 17] = True
    dot = np.zeros((61, 83), bool)
    dot[30, 41] = True
    checker = (np.indices((40, 50)).sum(0) % 7 == 0)
    for mask in (blobs, lines, dot, checker, ~blobs, ~dot):
        assert np.array_equal(grid.distance_um(mask, grid_um=g), ndi.distance_transform_edt(mask, sampling=g))
        d_out, d_in = ndi.distance_transform_edt(~mask, sampling=g), ndi.distance_transform_edt(mask, sampling=g)
        assert np.array_equal(grid.signed_distance(mask, grid_um=g), np.where(mask, -(d_in - g / 2), d_out - g / 2))


def test_distances_on_grids_of_more_than_65535_rows():
    """The column pass keeps 2 bytes per pixel below 65,535 rows and 4 above; both give scipy's values."""
    from scipy import ndimage as ndi

    from chemozone import grid

    mask = np.zeros((70_000, 3), bool)
    mask[[5, 40_000, 69_990], [0, 2, 1]] = True
    assert grid._BandedEDT(mask, 1.0, grid._edt_kernels()).col.dtype == np.uint32
    assert grid._BandedEDT(mask[:600], 1.0, grid._edt_kernels()).col.dtype == np.uint16
    assert np.array_equal(grid.distance_um(~mask, grid_um=0.65), ndi.distance_transform_edt(~mask, sampling=0.65))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(1, 9), (9, 1), (13, 17), (40, 23), (2, 60)]),
       kind=st.sampled_from(["random", "lattice", "diagonals", "points"]), p=st.sampled_from([0.01, 0.1, 0.5]))
def test_nearest_feature_is_scipys_feature_transform_bit_for_bit(seed, shape, kind, p):
    """The cell expansion takes each pixel's nucleus from the feature transform: the nearest feature pixel, and among
    equidistant ones scipy's choice. Lattices, diagonals and isolated points make many such ties."""
    from scipy import ndimage as ndi

    from chemozone.grid import nearest_feature

    rng = np.random.default_rng(seed)
    h, w = shape
    if kind == "random":
        f = rng.random(shape) < p
    elif kind == "lattice":
        f = np.zeros(shape, bool)
        f[rng.integers(0, 3)::rng.integers(2, 6), rng.integers(0, 3)::rng.integers(2, 6)] = True
    elif kind == "diagonals":
        f = np.add.outer(np.arange(h), np.arange(w)) % rng.integers(2, 7) == 0
    else:
        f = np.zeros(shape, bool)
        f[rng.integers(0, h, 3), rng.integers(0, w, 3)] = True
    want = ndi.distance_transform_edt(~f, return_distances=False, return_indices=True)
    got = nearest_feature(f)
    assert got.dtype == np.int32 and np.array_equal(got, want)


@pytest.mark.parametrize("numba", [True, False])
def test_nearest_feature_of_structured_masks_and_without_features(monkeypatch, numba):
    from scipy import ndimage as ndi

    from chemozone.grid import nearest_feature

    monkeypatch.setenv("CHEMOZONE_NO_NUMBA", "" if numba else "1")
    rng = np.random.default_rng(5)
    blobs = ndi.gaussian_filter(rng.random((150, 130)), 4) > 0.55
    checker = np.indices((40, 50)).sum(0) % 2 == 0
    ring = np.hypot(*np.indices((61, 61)) - 30) // 1 == 20  # a circle: every kind of tie around its centre
    for f in (blobs, ~blobs, checker, ring, np.ones((3, 4), bool), np.zeros((3, 4), bool)):
        want = ndi.distance_transform_edt(~f, return_distances=False, return_indices=True)
        assert np.array_equal(nearest_feature(f), want)
    with pytest.raises(ValueError, match="2-D"):
        nearest_feature(np.zeros((2, 2, 2), bool))


def test_distance_um_rejects_other_shapes():
    from chemozone.grid import distance_um

    with pytest.raises(ValueError, match="2-D"):
        distance_um(np.zeros((2, 2, 2), bool), grid_um=1.0)


def test_signed_distance_empty_and_full():
    assert np.isposinf(signed_distance(np.zeros((2, 2), bool), grid_um=2.0)).all()
    assert np.isneginf(signed_distance(np.ones((2, 2), bool), grid_um=2.0)).all()


def test_stage_modules_reexport_the_one_definition():
    import chemozone.grid as grid
    from chemozone import segment, spatial, tissue, zones

    assert tissue.grid_factor is grid.grid_factor and zones.grid_factor is grid.grid_factor
    assert spatial.signed_distance is grid.signed_distance and zones.cell_grid_index is grid.cell_grid_index
    assert segment.grid_factor is grid.grid_factor


def test_grid_formula_is_written_once():
    """No copy of the grid-factor formula anywhere in the library or the plugin."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"round\(\s*(float\()?\s*\w*grid\w*\)?\s*/\s*\w*(pixel|px)\w*")
    hits = [str(p.relative_to(root)) for d in ("pipeline", "plugins") for p in (root / d).rglob("*.py")
            if pattern.search(p.read_text(encoding="utf-8"))]
    assert hits == ["pipeline/chemozone/grid.py"]
