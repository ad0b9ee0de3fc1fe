"""Whole sections at speed: tile tasks that read their own pixels, bit-identical tiling, label pyramids."""
from __future__ import annotations

import hashlib
import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_segment import _seam_image

from chemozone.io import read_labels_pyramid, read_labels_zarr, write_labels_zarr
from chemozone.segment import segment_image

NAMES = ["CD45", "panCK", "DAPI"]
OPTS = {"nucleus_diameter_um": 8.0, "cell_method": "membrane_watershed", "membrane_channels": ["CD45", "panCK"],
        "tile_size_px": 96, "tile_overlap_um": 5.0}
# sha256 (first 16 hex) of (nuclei, cells) of the seam image below, tiled 3 x 3 with membranes and the tissue mask
# of _tissue(), as computed by the tiling before tiles read their own pixels (commit bf43be9: numpy windows and
# the tissue mask in the graph); 32 nuclei
TODAY_SEAM_TISSUE = "38e028dd38a8f1b7"


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _tissue(shape):
    t = np.zeros(shape, bool)
    t[shape[0] // 14 : shape[0] * 5 // 6, shape[1] // 7 : shape[1] * 35 // 36] = True
    return t


def test_tiles_reading_their_own_pixels_reproduce_todays_tiling_bit_for_bit(tmp_path):
    img, _ = _seam_image()
    tissue = _tissue((72, 72))  # analysis grid 2 µm = 4 px
    with dask.config.set(scheduler="synchronous"):
        mem = segment_image(img, channels=NAMES, pixel_size_um=0.5, tissue=tissue, tissue_grid_um=2.0, **OPTS)
        zn, zc = segment_image(da.from_array(img, chunks=(1, 100, 100)), channels=NAMES, pixel_size_um=0.5,
                               tissue=tissue, tissue_grid_um=2.0, store=tmp_path / "seg", **OPTS)
    assert _digest(*mem) == TODAY_SEAM_TISSUE
    assert _digest(zn.compute(), zc.compute()) == TODAY_SEAM_TISSUE
    assert int(mem[0].max()) == 32  # of the 36 nuclei found without the mask (test_segment's seam test)
    assert not (tmp_path / "seg" / ".tissue").exists() and not (tmp_path / "seg" / ".tiles").exists()


def test_tile_tasks_carry_no_arrays_on_a_distributed_client(tmp_path):
    from distributed import Client, LocalCluster

    from chemozone.io import read_image, write_ome_tiff

    img, _ = _seam_image()
    path = tmp_path / "img.ome.tif"
    write_ome_tiff(path, img, channels=NAMES, pixel_size_um=0.5)
    lazy = read_image(path).data
    tissue = _tissue((144, 144))  # analysis grid 1 µm = 2 px: the same region as _tissue((72, 72)) at 2 µm
    threshold = 16_000
    assert len(pickle.dumps(tissue)) > threshold  # embedding the mask (the old way) would cross the threshold
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": f"{threshold}B"}), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        nuc, cells = segment_image(lazy, channels=NAMES, pixel_size_um=0.5, tissue=tissue, tissue_grid_um=1.0,
                                   store=tmp_path / "dist", **OPTS)
        nuc, cells = nuc.compute(), cells.compute()
    large = [str(w.message) for w in seen if "large graph" in str(w.message)]
    assert large == []
    assert _digest(nuc, cells) == TODAY_SEAM_TISSUE


@pytest.mark.parametrize("with_nuclei", [True, False])
def test_quantification_tiles_run_as_worker_tasks_that_read_their_own_pixels(tmp_path, with_nuclei):
    """On a distributed client, a lazy image's tiles are measured by tasks on the workers (no arrays in the graph);
    the table equals the in-process tile loop's, bit for bit."""
    import zarr
    from distributed import Client, LocalCluster, get_task_stream

    import chemozone.quantify._cells as qc
    from chemozone.io import read_image, write_ome_tiff
    from chemozone.quantify import quantify_cells

    img, _ = _seam_image()
    path = tmp_path / "img.ome.tif"
    write_ome_tiff(path, img, channels=NAMES, pixel_size_um=0.5)
    nuclei, cells = segment_image(img, channels=NAMES, pixel_size_um=0.5, **OPTS)
    cells = cells.copy()
    cells[:, :96] = 0  # the first column of tiles holds no cell
    nuclei = np.where(cells > 0, nuclei, 0).astype(np.uint32)
    lazy = {}
    for name, lab in (("cells", cells), ("nuclei", nuclei)):
        z = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="w", shape=lab.shape, chunks=(64, 64), dtype="uint32")
        z[:] = lab
        lazy[name] = da.from_zarr(z)
    kw = dict(channels=NAMES, pixel_size_um=0.5, statistics=("mean", "total", "std"), morphology=True, tile_size_px=96)
    ref = quantify_cells(img, cells, nuclei=nuclei if with_nuclei else None, **kw)
    threshold = 16_000
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": f"{threshold}B"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, get_task_stream(client) as stream, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = quantify_cells(read_image(path).data, lazy["cells"], nuclei=lazy["nuclei"] if with_nuclei else None,
                             **kw)
    assert [str(w.message) for w in seen if "large graph" in str(w.message)] == []
    tasks = [t for t in stream.data if str(t["key"]).startswith(qc._measure_tile_task.__name__)]
    assert len(tasks) == 9  # one per tile (3 × 3), the empty first column included
    assert len(ref) > 10
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_labels_pyramid_levels_are_strided_downsamples(tmp_path):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5000, (300, 200)).astype(np.uint32)
    store = tmp_path / "masks.ome.zarr"
    write_labels_zarr(store, "cells", lab, pixel_size_um=0.5, chunk_px=64)
    write_labels_zarr(store, "nuclei", da.from_array(lab, chunks=(70, 70)), pixel_size_um=0.5, chunk_px=64)
    for name in ("cells", "nuclei"):
        levels = read_labels_pyramid(store, name)
        # halved until the largest side fits one 64 px chunk: 300 -> 150 -> 75 -> 38
        assert [lv.shape for lv in levels] == [(300, 200), (150, 100), (75, 50), (38, 25)]
        np.testing.assert_array_equal(levels[0].compute(), lab)
        for k, lv in enumerate(levels):
            np.testing.assert_array_equal(lv.compute(), lab[:: 2**k, :: 2**k])
            assert lv.dtype == np.uint32
        np.testing.assert_array_equal(read_labels_zarr(store, name), lab)  # full resolution, as before
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(n for n in Reader(parse_url(str(store / "labels" / "cells"), fmt=FormatV04()))() if n.data)
    assert [d.shape for d in node.data] == [(300, 200), (150, 100), (75, 50), (38, 25)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[0.5 * 2**k, 0.5 * 2**k] for k in range(4)]
    write_labels_zarr(store, "tissue", lab > 10, pixel_size_um=2.0, chunk_px=64, levels=1)
    assert len(read_labels_pyramid(store, "tissue")) == 1
    with pytest.raises(ValueError, match="levels must be >= 1, got 0"):
        write_labels_zarr(store, "tissue", lab, pixel_size_um=2.0, levels=0)


# ------------------------------------------------------ the linear-time label steps equal their references
def _ref_largest_piece(labels):
    """The sort-based implementation these steps replaced (kept here as the reference)."""
    from scipy import ndimage as ndi

    pieces, n = ndi.label(labels > 0)
    if n == 0:
        return labels
    code = pieces.astype(np.int64) * (int(labels.max()) + 1) + labels
    uniq, inv, cnt = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    lab_of = uniq % (int(labels.max()) + 1)
    order = np.lexsort((-cnt, lab_of))
    best = np.zeros(len(uniq), bool)
    first = np.ones(len(order), bool)
    first[1:] = lab_of[order][1:] != lab_of[order][:-1]
    best[order[first]] = True
    best[lab_of == 0] = False
    return np.where(best[inv.reshape(labels.shape)], labels, 0)


def _ref_fill_holes_labels(labels):
    from scipy import ndimage as ndi

    bg = labels == 0
    holes, n = ndi.label(bg)
    if n <= 1:
        return labels
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    ring = ndi.binary_dilation(bg) & ~bg
    hid = ndi.grey_dilation(holes, size=(3, 3))[ring]
    out = labels.copy()
    pairs = np.unique(np.stack([hid, labels[ring]]), axis=1)
    hole_ids, counts = np.unique(pairs[0], return_counts=True)
    single = set(hole_ids[counts == 1].tolist()) - set(border.tolist()) - {0}
    lut = np.zeros(n + 1, np.int64)
    for h_id, l_id in pairs.T:
        if int(h_id) in single:
            lut[h_id] = l_id
    fill = lut[holes]
    out[bg & (fill > 0)] = fill[bg & (fill > 0)]
    return out


def _messy_labels(seed: int, shape=(160, 200)) -> np.ndarray:
    """Touching random discs and rings (holes, pieces joined through neighbours, ties), int32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for i in range(1, 60):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 12)
        d = np.hypot(yy - cy, xx - cx)
        m = (d < r) & ((d > r / 2) if i % 4 == 0 else True)
        lab[m & (rng.random(shape) > 0.03)] = i  # a few pinholes
    return lab


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_cleanup_steps_equal_the_sort_based_references(seed):
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    from chemozone.segment._cells import _expand_labels, _reach
    from chemozone.segment._labels import (
        _dilate_cross,
        _distance_capped,
        _fill_holes_labels,
        _fill_small_holes,
        _largest_piece,
        _open3,
        _relabel,
    )

    lab = _messy_labels(seed)
    pieces, filled = _largest_piece(lab), _fill_holes_labels(lab)
    assert (pieces != lab).any() and (filled != lab).any()  # pieces dropped and holes filled: not vacuous
    np.testing.assert_array_equal(pieces, _ref_largest_piece(lab))
    np.testing.assert_array_equal(filled, _ref_fill_holes_labels(lab))
    ids, first = np.unique(lab.ravel(), return_index=True)
    keep = np.zeros(int(lab.max()) + 1, bool)
    keep[::3] = True
    keep[0] = False  # background stays 0
    sel = keep[ids]
    ref = np.zeros(int(lab.max()) + 1, np.uint32)
    ref[ids[sel][np.argsort(first[sel], kind="stable")]] = np.arange(1, sel.sum() + 1)
    relabelled, lut = _relabel(lab, keep)
    np.testing.assert_array_equal(relabelled, ref[lab])
    np.testing.assert_array_equal(lut, ref)
    fg = lab > 0
    holes = ndi.binary_fill_holes(fg) & ~fg
    hl, _ = ndi.label(holes)
    small = np.bincount(hl.ravel()) < 20
    small[0] = False
    np.testing.assert_array_equal(_fill_small_holes(fg, 20), fg | small[hl])
    for structure in (None, np.ones((3, 3), bool)):
        opened = ndi.binary_opening(fg, structure=structure)
        np.testing.assert_array_equal(_open3(fg) if structure is not None else _dilate_cross(fg),
                                      opened if structure is not None else ndi.binary_dilation(fg))
    for cap in (None, 3.5, 6.0):
        ref_d = ndi.distance_transform_edt(fg).astype(np.float32)
        np.testing.assert_array_equal(_distance_capped(fg, cap), ref_d if cap is None else np.minimum(ref_d, cap))
    nuc = np.where(lab % 3 == 0, lab, 0).astype(np.uint32)
    for dist in (0.5, 3.0, 6.036, 10.0):  # integer and non-integer reaches
        np.testing.assert_array_equal(_expand_labels(nuc, dist), expand_labels(nuc, distance=dist))
        np.testing.assert_array_equal(_reach(nuc, dist)[0], ndi.distance_transform_edt(nuc == 0) <= dist)


def test_component_peaks_equal_peak_local_max():
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from chemozone.segment._watershed import _component_peaks

    rng = np.random.default_rng(4)
    fg = ndi.gaussian_filter(rng.random((150, 180)), 3) > 0.5
    comp, _ = ndi.label(fg)
    seed_map = np.where(fg, ndi.gaussian_filter(rng.random((150, 180)).astype(np.float32), 2), 0).astype(np.float32)
    seed_map[comp == comp.max()] = 0.25  # a flat component
    seed_map[np.round(seed_map, 2) == 0.5] = 0.5  # plateaus: ties between candidates
    for md in (1, 2, 4, 7):
        ref = peak_local_max(seed_map, min_distance=md, labels=comp, exclude_border=False)
        got = _component_peaks(seed_map, comp, md)
        assert len(ref) > 10
        np.testing.assert_array_equal(got, ref)


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 48), w=st.integers(1, 48), density=st.floats(0.2, 0.99), opened=st.booleans(),
       cap=st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0001, 4.5, 9.0, 12.7, 31.9, 32.0]), seed=st.integers(0, 2**16))
def test_capped_distance_by_the_separable_transform_equals_scipys(h, w, density, opened, cap, seed):
    """The small-cap path of ``_distance_capped`` (uint8/uint16 shifted minima) gives scipy's float32
    Euclidean distances, clipped at the cap, bit for bit: borders are not background, any aspect ratio."""
    from scipy import ndimage as ndi

    from chemozone.segment._labels import _SEPARABLE_MAX_CAP, _distance_capped, _distance_capped_separable

    fg = np.random.default_rng(seed).random((h, w)) < density
    if opened:
        fg = ndi.binary_opening(fg)
    ref = np.minimum(ndi.distance_transform_edt(fg).astype(np.float32), cap)
    if fg.any() and not fg.all():
        assert cap <= _SEPARABLE_MAX_CAP
        np.testing.assert_array_equal(_distance_capped_separable(fg, cap), ref)
    np.testing.assert_array_equal(_distance_capped(fg, cap), ref)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), h=st.integers(2, 90), w=st.integers(2, 90))
def test_label_cleanup_equals_the_references_on_any_shape(seed, h, w):
    """Largest piece, hole filling, opening and relabelling on messy labels of any shape (pieces joined
    through neighbours, rings, holes at the border) equal the sort-based / scipy references."""
    from scipy import ndimage as ndi

    from chemozone.segment._labels import _fill_holes_labels, _largest_piece, _open3, _size_filter

    lab = _messy_labels(seed, shape=(h, w))
    np.testing.assert_array_equal(_largest_piece(lab), _ref_largest_piece(lab))
    np.testing.assert_array_equal(_fill_holes_labels(lab), _ref_fill_holes_labels(lab))
    np.testing.assert_array_equal(_open3(lab > 0), ndi.binary_opening(lab > 0, structure=np.ones((3, 3), bool)))
    sizes = np.bincount(lab.ravel())
    ids, first = np.unique(lab.ravel(), return_index=True)
    kept = [i for i in ids[np.argsort(first, kind="stable")] if i and 20 <= sizes[i] <= 200]
    ref = np.zeros(int(lab.max()) + 1, np.uint32)
    ref[kept] = np.arange(1, len(kept) + 1)
    np.testing.assert_array_equal(_size_filter(lab, 20, 200), ref[lab])
    empty = np.zeros((h, w), lab.dtype)  # no object at all (e.g. cellpose with random weights)
    for f in (_largest_piece, _fill_holes_labels):
        np.testing.assert_array_equal(f(empty), empty)
    assert _size_filter(empty, 20, 200).dtype == np.uint32 and not _size_filter(empty, 20, 200).any()


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), h=st.integers(1, 70), w=st.integers(1, 70), blur=st.floats(0.5, 4),
       level=st.floats(0.45, 0.56), rounded=st.booleans(), md=st.integers(1, 8))
def test_component_peaks_equal_peak_local_max_on_any_map(seed, h, w, blur, level, rounded, md):
    """Plateaus (rounded maps), flat components, one-pixel components and components closer than
    ``min_distance``: the same peaks in the same order as scikit-image."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from chemozone.segment._watershed import _component_peaks

    rng = np.random.default_rng(seed)
    fg = ndi.gaussian_filter(rng.random((h, w)), blur) > level
    comp, n = ndi.label(fg)
    seed_map = ndi.gaussian_filter(rng.random((h, w)).astype(np.float32), blur / 2)
    seed_map = np.where(fg, np.round(seed_map, 2) if rounded else seed_map, 0).astype(np.float32)
    if n:
        seed_map[comp == n] = 0.25  # a flat component
    ref = peak_local_max(seed_map, min_distance=md, labels=comp, exclude_border=False)
    np.testing.assert_array_equal(_component_peaks(seed_map, comp, md), ref.reshape(-1, 2))


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), f=st.integers(1, 9), oy=st.integers(0, 8), ox=st.integers(0, 8),
       seed=st.integers(0, 2**16))
def test_block_minima_equal_those_of_the_edge_padded_image(h, w, f, oy, ox, seed):
    from chemozone.segment._preprocess import _block_min_rows

    by, bx = oy % f, ox % f
    img = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    padded = np.pad(img, ((by, (-(h + by)) % f), (bx, (-(w + bx)) % f)), mode="edge")
    ref = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).min(axis=(1, 3))
    np.testing.assert_array_equal(_block_min_rows(_block_min_rows(img, by, f).T, bx, f).T, ref)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 150), w=st.integers(1, 150), chunk=st.sampled_from([7, 16, 48, 64]), lazy=st.booleans(),
       levels=st.one_of(st.none(), st.integers(1, 5)), seed=st.integers(0, 2**16))
def test_labels_pyramid_written_in_one_pass_is_every_strided_level(tmp_path_factory, h, w, chunk, lazy, levels, seed):
    """Every level of any shape, chunk size (also one that is not a multiple of 2**k) and number of levels equals
    ``labels[::2**k, ::2**k]``, chunked ``chunk`` x ``chunk``, from numpy or from a dask array of other chunks."""
    import zarr

    lab = np.random.default_rng(seed).integers(0, 70000, (h, w)).astype(np.uint32)
    store = tmp_path_factory.mktemp("pyr") / "masks.ome.zarr"
    src = da.from_array(lab, chunks=(13, 29)) if lazy else lab
    write_labels_zarr(store, "cells", src, pixel_size_um=0.5, chunk_px=chunk, levels=levels)
    got = read_labels_pyramid(store, "cells")
    n = levels if levels is not None else len(got)
    assert len(got) == n
    for k, lv in enumerate(got):
        np.testing.assert_array_equal(lv.compute(), lab[:: 2**k, :: 2**k])
        arr = zarr.open_array(str(store / "labels" / "cells" / str(k)), mode="r")
        assert arr.chunks == (min(chunk, arr.shape[0]), min(chunk, arr.shape[1])) and arr.dtype == np.uint32
