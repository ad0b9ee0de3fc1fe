"""Whole sections at speed: tile tasks that read their own pixels, bit-identical tiling, label pyramids."""
from __future__ import annotations

import hashlib
import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
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
