"""Tissue mask on the analysis grid."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from chemozone.tissue import block_means, grid_factor, grid_shape, tissue_mask


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
    mask, grid_um = tissue_mask(da.from_array(img, chunks=(1, 128, 128)), pixel_size_um=1.0, **cfg)
    assert grid_um == 2.0 and mask.shape == (300, 300) and mask.dtype == bool
    truth_grid = truth[::2, ::2]
    iou = (mask & truth_grid).sum() / (mask | truth_grid).sum()
    assert iou > 0.97
    assert not mask[150, 100]  # tear excluded (6000 µm² > fill_holes_um2)
    assert mask[100, 200]  # small hole (~80 µm²) filled
    assert not mask[20, 20]  # debris (~113 µm² < min_area_um2) dropped
    # numpy input gives the same mask
    mask_np, _ = tissue_mask(img, pixel_size_um=1.0, **cfg)
    np.testing.assert_array_equal(mask, mask_np)


def test_tissue_mask_is_intensity_scale_free_and_channel_selectable():
    img, _ = _explant()
    cfg = dict(grid_um=4.0, smooth_um=4.0, min_area_um2=2000.0, fill_holes_um2=500.0)
    m1, g = tissue_mask(img, pixel_size_um=1.0, **cfg)
    m2, _ = tissue_mask(img.astype(np.float32) / 1000.0, pixel_size_um=1.0, **cfg)
    np.testing.assert_array_equal(m1, m2)
    assert g == 4.0
    m3, _ = tissue_mask(img, pixel_size_um=1.0, **cfg, channel_indices=[1])
    assert (m3 == m1).mean() > 0.99


def test_tissue_mask_absolute_threshold_and_errors():
    img, _ = _explant()
    cfg = dict(grid_um=4.0, smooth_um=4.0, threshold=2.0, min_area_um2=2000.0)
    m, _ = tissue_mask(img, pixel_size_um=1.0, **cfg)
    assert not m.any()  # scaled signal never exceeds ~1
    with pytest.raises(ValueError, match="3-D"):
        tissue_mask(img[0], pixel_size_um=1.0)


def test_field_that_is_all_tissue_is_not_split_into_dim_and_bright():
    """A crop of a section (no glass): dim and bright tissue both count; a dark tear is still excluded."""
    import numpy as np

    from chemozone.tissue import tissue_mask

    rng = np.random.default_rng(0)
    img = np.empty((1, 400, 400))
    img[0, :200] = rng.normal(1000, 60, (200, 400))  # bright tissue
    img[0, 200:] = rng.normal(750, 60, (200, 400))   # dim tissue (ratio 0.75: no glass anywhere)
    img[0, 300:320, 50:350] = 20                      # a tear
    mask, grid_um = tissue_mask(img, pixel_size_um=1.0, grid_um=2, smooth_um=2, fill_holes_um2=100)
    assert mask[:100].all() and mask[120:145].mean() > 0.95  # dim half kept
    assert not mask[152:158, 40:170].any()                    # tear excluded
    # the same image on glass: the dark surround is background
    glass = np.full((1, 600, 600), 30.0)
    glass[:, 100:500, 100:500] = img
    mask2, _ = tissue_mask(glass, pixel_size_um=1.0, grid_um=2, smooth_um=2, fill_holes_um2=100)
    assert not mask2[:40].any() and mask2[60:240, 60:240].mean() > 0.95


def test_real_fields_that_are_all_tissue(shared_data):
    from chemozone.io import read_image
    from chemozone.tissue import tissue_mask

    for path in ["lymphoid_5ch/input.tiff", "vectra_phenoptr/FIHC4__0929309_HP_IM3_2_component_data.tif"]:
        img = read_image(shared_data / path, pixel_size_um=0.5)
        mask, _ = tissue_mask(img.data, pixel_size_um=img.pixel_size_um)
        assert mask.mean() > 0.95, path
    # a TMA core on glass (.qptiff): the core is tissue, the glass around it is not
    img = read_image(shared_data / "qptiff_vectra" / "small_vectra.qptiff")
    mask, _ = tissue_mask(img.data, pixel_size_um=img.pixel_size_um)
    assert 0.4 < mask.mean() < 0.6 and not mask[:, -20:].any() and mask[mask.shape[0] // 2, mask.shape[1] // 3]
