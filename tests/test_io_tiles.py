"""Tiled TIFF windows decoded straight from the file (``io._tiff._read_tiles``) against tifffile, and which
files take that path (the others are read through tifffile's zarr store)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from chemozone.io import read_image, write_ome_tiff
from chemozone.io._tiff import TiffRegion, _read_tiles, _tiff

SHAPE = (3, 200, 230)  # neither side a multiple of the 64 px tiles


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 100, SHAPE).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, SHAPE, endpoint=True).astype(dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (path, level, expected array, whether the direct path applies)."""
    d = tmp_path_factory.mktemp("tiles")
    u16, f32, u8 = _data(np.uint16), _data(np.float32, 1), _data(np.uint8, 2)
    out = {}
    out["ome_zlib"] = (write_ome_tiff(d / "a.ome.tif", u16, channels=list("abc"), pixel_size_um=0.5, tile_px=64), 0, u16, True)
    out["ome_raw"] = (write_ome_tiff(d / "b.ome.tif", u16, channels=list("abc"), pixel_size_um=0.5, tile_px=64,
                                     compression=None), 0, u16, True)
    out["float32"] = (write_ome_tiff(d / "c.ome.tif", f32, channels=list("abc"), pixel_size_um=0.5, tile_px=64), 0, f32, True)
    pyr = write_ome_tiff(d / "d.ome.tif", u16, channels=list("abc"), pixel_size_um=0.5, tile_px=64, pyramid_levels=1)
    with tifffile.TiffFile(pyr) as t:
        lvl1 = t.series[0].levels[1].asarray()
    out["pyramid_level1"] = (pyr, 1, lvl1, True)
    tifffile.imwrite(d / "e.tif", u16[0], tile=(64, 64), compression="zlib")
    out["single_channel"] = (d / "e.tif", 0, u16[:1], True)
    tifffile.imwrite(d / "f.tif", u16, tile=(64, 64), compression="zlib", predictor=True, photometric="minisblack")
    out["predictor"] = (d / "f.tif", 0, u16, False)
    tifffile.imwrite(d / "g.tif", u16, compression="zlib", rowsperstrip=16, photometric="minisblack")
    out["strips"] = (d / "g.tif", 0, u16, False)
    tifffile.imwrite(d / "h.tif", u16, tile=(64, 64), compression="lzw", photometric="minisblack")
    out["lzw"] = (d / "h.tif", 0, u16, False)
    tifffile.imwrite(d / "i.tif", u16, tile=(64, 64), compression="zlib", byteorder=">", photometric="minisblack")
    out["big_endian"] = (d / "i.tif", 0, u16, False)
    tifffile.imwrite(d / "j.tif", u8, tile=(64, 64), compression="zlib", photometric="minisblack")
    out["uint8"] = (d / "j.tif", 0, u8, True)
    return out


def _region(path, level: int, expected: np.ndarray) -> TiffRegion:
    return TiffRegion(str(path), 0, level, expected.shape, expected.dtype)


@pytest.mark.parametrize("name", ["ome_zlib", "ome_raw", "float32", "pyramid_level1", "single_channel", "predictor",
                                  "strips", "lzw", "big_endian", "uint8"])
def test_which_files_are_decoded_directly(files, name):
    path, level, expected, direct = files[name]
    region = _region(path, level, expected)
    assert (region._tiles() is not None) == direct
    np.testing.assert_array_equal(region[0 : expected.shape[0], 0 : expected.shape[1], 0 : expected.shape[2]], expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_window_equals_tifffile(files, data):
    name = data.draw(st.sampled_from(sorted(files)))
    path, level, expected, _ = files[name]
    c, h, w = expected.shape
    c0 = data.draw(st.integers(0, c - 1))
    c1 = data.draw(st.integers(c0 + 1, c))
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    got = _region(path, level, expected)[c0:c1, y0:y1, x0:x1]
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected[c0:c1, y0:y1, x0:x1])


def test_other_keys_take_the_general_reader(files):
    path, level, expected, _ = files["ome_zlib"]
    region = _region(path, level, expected)
    np.testing.assert_array_equal(region[1], expected[1])  # an integer channel
    np.testing.assert_array_equal(region[:, ::3, 5:9], expected[:, ::3, 5:9])  # a step
    assert region[:, 10:10, :].shape == (3, 0, 230)  # an empty window


def test_whole_image_through_dask(files):
    path, _, expected, _ = files["ome_zlib"]
    np.testing.assert_array_equal(read_image(path).data.compute(), expected)


def test_absent_tiles_read_as_zero(files):
    """A tile of zero bytes (sparse files leave unwritten tiles out) is 0, as tifffile reads it."""
    path, level, expected, _ = files["ome_zlib"]
    plan = _region(path, level, expected)._tiles()
    counts = plan.counts.copy()
    counts[1, plan.tiles_x + 1] = 0  # channel 1, tile row 1, tile column 1: pixels [64:128, 64:128]
    got = _read_tiles(plan._replace(counts=counts), 0, 3, 0, 200, 0, 230, expected.dtype)
    want = expected.copy()
    want[1, 64:128, 64:128] = 0
    np.testing.assert_array_equal(got, want)


def test_plan_is_cached_per_open_file(files):
    path, level, expected, _ = files["ome_zlib"]
    region = _region(path, level, expected)
    assert region._tiles() is region._tiles()
    tif, _ = _tiff(str(path))
    assert ("_cz_tiles", 0, 0) in tif.__dict__["_cz_tiles"]


def test_a_damaged_tile_names_the_file_channel_and_tile(files, tmp_path):
    import shutil

    from chemozone.errors import ImageError

    src, level, expected, _ = files["ome_zlib"]
    path = tmp_path / "damaged.ome.tif"
    shutil.copy(src, path)
    with tifffile.TiffFile(path) as t:
        page = t.series[0].levels[0].pages[1]
        off = int(page.dataoffsets[0])
    with open(path, "r+b") as fh:  # channel 1, tile 0: a zlib stream that does not start as one
        fh.seek(off)
        fh.write(b"\0" * 16)
    region = _region(path, level, expected)
    np.testing.assert_array_equal(region[0:1, 0:64, 0:64], expected[0:1, 0:64, 0:64])  # other channels still read
    with pytest.raises(ImageError, match=r"damaged\.ome\.tif: channel 1, tile 0 cannot be read \(.*\); the file is "
                                         r"truncated or damaged: export it again"):
        region[0:3, 0:100, 0:100]


def test_a_tile_past_the_end_of_the_file_is_an_error(files):
    import os

    from chemozone.errors import ImageError

    path, level, expected, _ = files["ome_zlib"]
    plan = _region(path, level, expected)._tiles()
    offsets = plan.offsets.copy()
    offsets[2, 0] = os.path.getsize(path) - 10  # as if the file had been cut inside channel 2's first tile
    with pytest.raises(ImageError, match=r"a\.ome\.tif: channel 2, tile 0 cannot be read \(ValueError: \d+ bytes "
                                         r"expected at offset \d+, the file ends before\)"):
        _read_tiles(plan._replace(offsets=offsets), 2, 3, 0, 10, 0, 10, expected.dtype)
