"""Tissue mask on the analysis grid."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from chemozone.tissue import TISSUE_OUTCOMES, block_means, count_channels, grid_factor, grid_shape, tissue_mask


def test_grid_factor_and_shape():
    assert grid_factor(0.5, 2.0) == 4
    assert grid_factor(0.497, 2.0) == 4
    assert grid_factor(3.0, 2.0) == 1
    assert grid_shape((10, 9), 4) == (3, 3)
    with pytest.raises(ValueError, match="must be > 0"):
        grid_factor(0, 2.0)


def test_block_means_exact_with_partial_blocks_numpy_and_dask():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, size=(2, 37, 23)).astype(np.uint16)
    bm = block_means(img, 4)
    assert bm.shape == (2, 10, 6)
    assert bm[1, 9, 5] == pytest.approx(img[1, 36:, 20:].mean())
    assert bm[0, 3, 2] == pytest.approx(img[0, 12:16, 8:12].mean())
    bm_d = block_means(da.from_array(img, chunks=(1, 10, 7)), 4)
    np.testing.assert_allclose(bm_d, bm)
    assert block_means(img, 4, [1]).shape == (1, 10, 6)


def _explant(shape=(600, 600), seed=0):
    """A disc of tissue (radius 200 px) with a large tear and a small hole, on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - 300) ** 2 + (xx - 300) ** 2 < 200**2
    tear = (np.abs(yy - 300) < 15) & (xx > 150) & (xx < 350)  # 30 x 200 px = 6000 px
    small_hole = (yy - 200) ** 2 + (xx - 400) ** 2 < 5**2  # ~ 80 px
    debris = (yy - 40) ** 2 + (xx - 40) ** 2 < 6**2  # small bright speck outside
    tissue = disc & ~tear & ~small_hole
    img = np.zeros((2,) + shape, np.float64)
    img[0] = rng.poisson(np.where(tissue | debris, 400, 20))
    img[1] = rng.poisson(np.where(tissue, 2000, 100)) * 3.0
    return img.astype(np.uint16), disc & ~tear


def test_tissue_mask_recovers_disc_excludes_tear_fills_small_holes_drops_debris():
    img, truth = _explant()
    cfg = dict(grid_um=2.0, smooth_um=2.0, min_area_um2=2000.0, fill_holes_um2=500.0)
    res = tissue_mask(da.from_array(img, chunks=(1, 128, 128)), pixel_size_um=1.0, **cfg)
    mask, grid_um = res.mask, res.grid_um
    assert grid_um == 2.0 and mask.shape == (300, 300) and mask.dtype == bool
    assert res.outcome == "tissue_on_glass" and res.fraction == pytest.approx(mask.mean())
    assert res.count_channels == []  # Poisson around 400 / 6000: no zeros, fluorescence-like
    truth_grid = truth[::2, ::2]
    iou = (mask & truth_grid).sum() / (mask | truth_grid).sum()
    assert iou > 0.97
    assert not mask[150, 100]  # tear excluded (6000 µm² > fill_holes_um2)
    assert mask[100, 200]  # small hole (~80 µm²) filled
    assert not mask[20, 20]  # debris (~113 µm² < min_area_um2) dropped
    # numpy input gives the same mask
    mask_np = tissue_mask(img, pixel_size_um=1.0, **cfg).mask
    np.testing.assert_array_equal(mask, mask_np)


def test_tissue_mask_is_intensity_scale_free_and_channel_selectable():
    img, _ = _explant()
    cfg = dict(grid_um=4.0, smooth_um=4.0, min_area_um2=2000.0, fill_holes_um2=500.0)
    r1 = tissue_mask(img, pixel_size_um=1.0, **cfg)
    m1, g = r1.mask, r1.grid_um
    m2 = tissue_mask(img.astype(np.float32) / 1000.0, pixel_size_um=1.0, **cfg).mask
    np.testing.assert_array_equal(m1, m2)
    assert g == 4.0
    m3 = tissue_mask(img, pixel_size_um=1.0, **cfg, channel_indices=[1]).mask
    assert (m3 == m1).mean() > 0.99


def test_tissue_mask_absolute_threshold_and_errors():
    img, _ = _explant()
    cfg = dict(grid_um=4.0, smooth_um=4.0, threshold=2.0, min_area_um2=2000.0)
    res = tissue_mask(img, pixel_size_um=1.0, **cfg)
    assert not res.mask.any()  # scaled signal never exceeds ~1
    assert res.outcome == "no_tissue" and res.fraction == 0.0
    # an absolute cut below every tissue value: glass excluded, the disc kept
    res = tissue_mask(img, pixel_size_um=1.0, **{**cfg, "threshold": 0.3})
    assert res.outcome == "tissue_on_glass" and 0.3 < res.fraction < 0.4
    # an absolute cut below the glass: the whole field
    res = tissue_mask(img, pixel_size_um=1.0, **{**cfg, "threshold": -1.0})
    assert res.outcome == "whole_field" and res.fraction == 1.0
    with pytest.raises(ValueError, match="3-D"):
        tissue_mask(img[0], pixel_size_um=1.0)
    with pytest.raises(ValueError, match="tissue.threshold must be 'otsu', 'triangle', 'li' or a number"):
        tissue_mask(img, pixel_size_um=1.0, threshold="median")


def test_field_that_is_all_tissue_is_not_split_into_dim_and_bright():
    """A crop of a section (no glass): dim and bright tissue both count; a dark tear is still excluded."""
    import numpy as np

    from chemozone.tissue import tissue_mask

    rng = np.random.default_rng(0)
    img = np.empty((1, 400, 400))
    img[0, :200] = rng.normal(1000, 60, (200, 400))  # bright tissue
    img[0, 200:] = rng.normal(750, 60, (200, 400))   # dim tissue (ratio 0.75: no glass anywhere)
    img[0, 300:320, 50:350] = 20                      # a tear
    res = tissue_mask(img, pixel_size_um=1.0, grid_um=2, smooth_um=2, fill_holes_um2=100)
    mask = res.mask
    assert res.outcome == "whole_field"
    assert mask[:100].all() and mask[120:145].mean() > 0.95  # dim half kept
    assert not mask[152:158, 40:170].any()                    # tear excluded
    # the same image on glass: the dark surround is background
    glass = np.full((1, 600, 600), 30.0)
    glass[:, 100:500, 100:500] = img
    res2 = tissue_mask(glass, pixel_size_um=1.0, grid_um=2, smooth_um=2, fill_holes_um2=100)
    mask2 = res2.mask
    assert res2.outcome == "tissue_on_glass"
    assert not mask2[:40].any() and mask2[60:240, 60:240].mean() > 0.95


def test_real_fields_that_are_all_tissue(shared_data):
    from chemozone.io import read_image
    from chemozone.tissue import tissue_mask

    for path in ["lymphoid_5ch/input.tiff", "vectra_phenoptr/FIHC4__0929309_HP_IM3_2_component_data.tif"]:
        img = read_image(shared_data / path, pixel_size_um=0.5)
        res = tissue_mask(img.data, pixel_size_um=img.pixel_size_um)
        assert res.mask.mean() > 0.95 and res.outcome == "whole_field", path
    # a TMA core on glass (.qptiff): the core is tissue, the glass around it is not
    img = read_image(shared_data / "qptiff_vectra" / "small_vectra.qptiff")
    res = tissue_mask(img.data, pixel_size_um=img.pixel_size_um)
    mask = res.mask
    assert res.outcome == "tissue_on_glass"
    assert 0.4 < mask.mean() < 0.6 and not mask[:, -20:].any() and mask[mask.shape[0] // 2, mask.shape[1] // 3]


def test_count_channels_are_judged_from_the_pixels():
    rng = np.random.default_rng(1)
    img = np.stack([
        rng.poisson(0.3, (200, 200)),                 # sparse ion counts (74 % zeros)
        rng.normal(500, 20, (200, 200)),              # fluorescence with an offset
        rng.poisson(300, (200, 200)),                 # integer but no zeros (a camera)
        rng.poisson(0.5, (200, 200)).astype(float),   # counts stored as float
    ])
    assert count_channels(img) == [0, 3]
    assert count_channels(img, [1, 3]) == [3]
    assert count_channels(da.from_array(img, chunks=(1, 64, 64)), window_px=64) == [0, 3]
    assert count_channels(-img[:1]) == []  # negative values are not counts


def test_sparse_count_field_that_is_all_tissue_is_not_empty():
    """Counts on 0.4 % of the pixels everywhere: the 1st and 99th percentiles of every channel are 0. The
    former scaling dropped every such channel and returned an empty mask (0 cells, no warning)."""
    rng = np.random.default_rng(0)
    img = rng.poisson(0.004, (3, 300, 300)).astype(np.uint8)
    res = tissue_mask(img, pixel_size_um=2.0)
    assert res.count_channels == [0, 1, 2]
    assert res.outcome == "whole_field" and res.fraction > 0.9


def test_blank_field_has_no_tissue():
    res = tissue_mask(np.zeros((2, 100, 100), np.uint16), pixel_size_um=1.0)
    assert res.outcome == "no_tissue" and res.fraction == 0.0 and not res.mask.any()
    assert set(TISSUE_OUTCOMES) == {"tissue_on_glass", "whole_field", "no_tissue"}


def _on_glass(a, margin, bg_rate, seed=0):
    """A (C, Y, X) count field in the middle of a glass margin (Poisson 0.01 counts per pixel and channel;
    channel 0 at ``bg_rate``, as a MIBI Background channel on the bare slide)."""
    rng = np.random.default_rng(seed)
    c, h, w = a.shape
    out = rng.poisson(0.01, (c, h + 2 * margin, w + 2 * margin)).astype(a.dtype)
    if bg_rate:
        out[0] = rng.poisson(bg_rate, out.shape[1:])
    out[:, margin:margin + h, margin:margin + w] = a
    return out


@pytest.mark.shared
def test_real_mibi_field_is_whole_tissue_and_kept_whole_on_glass(shared_data):
    """The real MIBI field (22 channels of sparse uint8 counts) is all tissue. Put on glass (a margin of
    0.01 counts per pixel), all of it must stay tissue: its dim stroma (lower left, few counts in most
    channels) was cut out by the former Otsu cut on the range-scaled mean (interior kept 0.96, and 0.86
    with a Background channel bright on the glass)."""
    from scipy import ndimage as ndi

    from chemozone.io import read_image

    img = read_image(shared_data / "mibi_fov8" / "channels", pixel_size_um=0.39)
    res = tissue_mask(img.data, pixel_size_um=0.39)
    assert res.outcome == "whole_field" and res.fraction > 0.98
    assert len(res.count_channels) == 22
    a = np.asarray(img.data)
    bg = img.channels.index("Background")
    a = a[[bg] + [i for i in range(len(img.channels)) if i != bg]]
    margin = 300
    for bg_rate in (0.0, 2.0):
        res = tissue_mask(_on_glass(a, margin, bg_rate), pixel_size_um=0.39)
        assert res.outcome == "tissue_on_glass" and res.grid_um == pytest.approx(1.95)
        truth = np.zeros(res.mask.shape, bool)
        truth[60:60 + 205, 60:60 + 205] = True  # 300 px margin / factor 5
        interior = ndi.binary_erosion(truth, iterations=8)  # 16 µm inside the field's edge
        assert res.mask[interior].all(), bg_rate
        assert not res.mask[:40].any() and not res.mask[-40:].any()
        assert (res.mask & truth).sum() / (res.mask | truth).sum() > 0.9


def test_rare_spots_far_above_a_channels_range_do_not_become_the_tissue():
    """A sham's few producer cells in a chemokine channel are 100x that channel's 99th percentile (seen on a
    synthetic sham: the automatic threshold split those spots from everything else and the mask came out
    empty). Each channel is capped at its robust range, so the tissue is found as without the spots."""
    img, truth = _explant()
    rng = np.random.default_rng(1)
    spots = rng.poisson(100, img.shape[1:]).astype(np.float64)
    for y, x in rng.integers(120, 480, size=(12, 2)):  # 12 spots of 16 x 16 px (< 1 % of the field)
        spots[y:y + 16, x:x + 16] = 60000
    img = np.concatenate([img, spots[None].astype(np.uint16)])
    cfg = dict(grid_um=2.0, smooth_um=2.0, min_area_um2=2000.0, fill_holes_um2=500.0)
    res = tissue_mask(img, pixel_size_um=1.0, **cfg)
    base = tissue_mask(img[:2], pixel_size_um=1.0, **cfg)
    truth_grid = truth[::2, ::2]
    assert res.outcome == "tissue_on_glass"
    assert (res.mask & truth_grid).sum() / (res.mask | truth_grid).sum() > 0.95
    assert (res.mask == base.mask).mean() > 0.99
