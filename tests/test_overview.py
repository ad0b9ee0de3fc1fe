"""The display overview of a large image: written from the tissue pass's block means, used by QC and napari."""
from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chemozone.grid import block_mean
from chemozone.overview import OverviewWriter, coarsen_means, overview_blocks, read_overview, with_overview
from chemozone.tissue import tissue_mask


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), f=st.integers(1, 4), k=st.integers(1, 5), seed=st.integers(0, 999))
def test_coarsened_grid_means_are_the_block_means_at_the_full_factor(h, w, f, k, seed):
    img = np.random.default_rng(seed).integers(0, 5000, (h, w)).astype(np.uint16)
    got = coarsen_means(block_mean(img, f), img.shape, f, k)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, block_mean(img, f * k), rtol=1e-6)


@dataclass
class _Img:
    """The parts of an ImageData that :func:`with_overview` and the QC composite use."""

    data: object
    levels: list
    channels: list


def _section(h=4300, w=700):
    """Three channels: tissue (a bright block) on glass; a ramp; a constant."""
    rng = np.random.default_rng(0)
    img = rng.poisson(20, (3, h, w)).astype(np.uint16)
    img[0, 500:3800, 100:600] += 800
    img[1] += (np.arange(w) // 3).astype(np.uint16)
    img[2] = 77
    return img


def test_the_tissue_pass_writes_the_overview_without_changing_the_mask(tmp_path):
    img = _section()
    f = 4  # 0.5 µm pixels on a 2 µm grid
    k = overview_blocks(img.shape[1:], f)
    assert k == 1  # 4300 px / (2048 · 4) rounds up to one grid block
    lazy = da.from_array(img, chunks=(1, 1024, 1024))
    ov = OverviewWriter(tmp_path / "overview.zarr", shape_cyx=img.shape, grid_factor=f, blocks=k,
                        channels=["DAPI", "CD3", "CK"], pixel_size_um=0.5)
    with_cb = tissue_mask(lazy, pixel_size_um=0.5, grid_um=2.0, channel_means_callback=ov)
    assert ov.finish() == tmp_path / "overview.zarr"
    plain = tissue_mask(lazy, pixel_size_um=0.5, grid_um=2.0)
    np.testing.assert_array_equal(with_cb.mask, plain.mask)
    levels, attrs = read_overview(tmp_path / "overview.zarr")
    assert attrs["factor"] == 4 and attrs["channels"] == ["DAPI", "CD3", "CK"] and attrs["shape_yx"] == [4300, 700]
    np.testing.assert_allclose(levels[0].compute(), block_mean(img, 4), rtol=1e-6)
    assert [lv.shape[1] for lv in levels] == [1075, 538, 269]  # halved until the longer side fits 512
    np.testing.assert_allclose(levels[1].compute(), block_mean(levels[0].compute(), 2), rtol=1e-6)
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_overview_missing_a_channel_is_not_kept(tmp_path):
    img = _section(h=300, w=200)
    ov = OverviewWriter(tmp_path / "overview.zarr", shape_cyx=img.shape, grid_factor=2, blocks=2,
                        channels=["a", "b", "c"], pixel_size_um=1.0)
    ov(0, block_mean(img[0], 2))
    with pytest.raises(ValueError, match="overview: channel 1 grid means have shape"):
        ov(1, block_mean(img[1], 4))
    assert ov.finish() is None
    assert not (tmp_path / "overview.zarr").exists() and not list(tmp_path.glob(".tmp-*"))
    assert read_overview(tmp_path / "overview.zarr") is None
    kw = dict(shape_cyx=img.shape, grid_factor=2, blocks=2, channels=["a", "b", "c"], pixel_size_um=1.0)
    done = OverviewWriter(tmp_path / "overview.zarr", **kw)
    for c in range(3):
        done(c, block_mean(img[c], 2))
    assert done.finish() == tmp_path / "overview.zarr"
    partial = OverviewWriter(tmp_path / "overview.zarr", **kw)  # a rerun that fails half-way: the old one stays
    partial(0, block_mean(img[0], 2) + 1)
    partial.abort()
    np.testing.assert_allclose(read_overview(tmp_path / "overview.zarr")[0][0][0].compute(), block_mean(img[0], 4),
                               rtol=1e-6)
    assert not list(tmp_path.glob(".tmp-*"))


def test_overview_only_for_large_images():
    assert overview_blocks((4096, 4096), 4) is None
    assert overview_blocks((4097, 10), 4) == 1
    assert overview_blocks((40000, 30000), 4) == 5  # level 0: 2000 × 1500 px


def test_with_overview_adds_levels_only_to_a_matching_image_without_pyramid(tmp_path):
    img = _section()
    ov = OverviewWriter(tmp_path / "ov.zarr", shape_cyx=img.shape, grid_factor=4, blocks=1,
                        channels=["DAPI", "CD3", "CK"], pixel_size_um=0.5)
    for c in range(3):
        ov(c, block_mean(img[c], 4))
    ov.finish()
    data = da.from_array(img, chunks=(1, 1024, 1024))
    plain = _Img(data, [data], ["DAPI", "CD3", "CK"])
    shown = with_overview(_Img(data, [data], ["DAPI", "CD3", "CK"]), tmp_path / "ov.zarr")
    assert len(shown.levels) == 4 and shown.levels[0] is data and shown.levels[1].shape == (3, 1075, 175)
    other = _Img(data, [data], ["DAPI", "CD3", "panCK"])  # another panel: not this image's overview
    assert with_overview(other, tmp_path / "ov.zarr") is other
    pyramid = _Img(data, [data, data[:, ::2, ::2]], ["DAPI", "CD3", "CK"])  # the file's own pyramid wins
    assert with_overview(pyramid, tmp_path / "ov.zarr") is pyramid
    assert with_overview(plain, tmp_path / "none.zarr") is plain


def test_qc_composite_from_the_overview_matches_the_one_from_the_pixels(tmp_path):
    """The QC composite of a large image read from the overview: the same picture as from the full-resolution
    pixels (display ranges within 5 %, mean colour of the tissue and of the glass within 0.01), at the overview's
    scale (16 image px per composite px: level 0 at factor 8, halved once to fit max_side)."""
    from chemozone.qc import QcChannel, composite_rgb

    img = _section(h=8200, w=600)
    ov = OverviewWriter(tmp_path / "ov.zarr", shape_cyx=img.shape, grid_factor=4, blocks=overview_blocks(img.shape[1:], 4),
                        channels=["DAPI", "CD3", "CK"], pixel_size_um=0.5)
    for c in range(3):
        ov(c, block_mean(img[c], 4))
    ov.finish()
    data = da.from_array(img, chunks=(1, 1024, 1024))
    chans = [QcChannel("DAPI", "nuclear", "blue"), QcChannel("CD3", "leukocyte", "red")]
    full, f_full, s_full = composite_rgb(_Img(data, [data], ["DAPI", "CD3", "CK"]), channels=chans)
    fast, f_fast, s_fast = composite_rgb(with_overview(_Img(data, [data], ["DAPI", "CD3", "CK"]), tmp_path / "ov.zarr"),
                                         channels=chans)
    assert f_fast == pytest.approx(8200 / 513) and fast.shape[:2] == (513, 38)
    for a, b in zip(s_full, s_fast):
        assert b["lo"] == pytest.approx(a["lo"], rel=0.05) and b["hi"] == pytest.approx(a["hi"], rel=0.05)
    for y0, y1 in ((1000, 3000), (4500, 8000)):  # tissue, glass (image rows)
        np.testing.assert_allclose(fast[int(y0 / f_fast):int(y1 / f_fast)].mean(axis=(0, 1)),
                                   full[int(y0 / f_full):int(y1 / f_full)].mean(axis=(0, 1)), atol=0.01)
