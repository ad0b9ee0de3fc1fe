"""The cellpose adapter: fake models for the contract and tiling, one real run on random weights."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from chemozone.errors import ChannelError, ConfigError, MissingDependencyError
from chemozone.metrics import match_scores, segmentation_report
from chemozone.segment import _cellpose, segment_image, segment_nuclei, segmentation_provenance


class FakeModel:
    """CellposeModel ``eval`` contract: threshold + connected components; records its calls."""

    def __init__(self):
        self.calls = []

    def eval(self, x, diameter=None, flow_threshold=0.4, cellprob_threshold=0.0, batch_size=8, normalize=True,
             channel_axis=None, **kw):
        self.calls.append({"shape": x.shape, "diameter": diameter, "flow_threshold": flow_threshold,
                           "cellprob_threshold": cellprob_threshold, "channel_axis": channel_axis,
                           "normalize": normalize, "x": x})
        if channel_axis is not None:
            x = np.moveaxis(x, channel_axis, -1)[..., -1]  # the nuclear channel comes last in these tests
        masks, _ = ndi.label(x > (x.min() + x.max()) / 2)
        return masks.astype(np.int32), [None], None


def _spots(shape=(300, 300), seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    truth = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for cy in range(12, shape[0] - 8, 24):
        for cx in range(12, shape[1] - 8, 24):
            k += 1
            jy, jx = rng.uniform(-3, 3, 2)
            m = (yy - cy - jy) ** 2 + (xx - cx - jx) ** 2 < 36
            img[m] = 1000
            truth[m] = k
    return img, truth


def test_fake_model_contract_and_diameter_in_pixels():
    img, truth = _spots((96, 96))
    model = FakeModel()
    lab = segment_nuclei(img, pixel_size_um=0.5, nucleus_diameter_um=6.0, method="cellpose", model=model,
                         cellpose_flow_threshold=0.7, min_area_um2=1.0)
    assert lab.dtype == np.uint32 and lab.shape == img.shape
    assert segmentation_report(truth, lab)["f1_50"] == 1.0
    assert model.calls[0]["diameter"] == pytest.approx(12.0)
    assert model.calls[0]["flow_threshold"] == 0.7
    segment_nuclei(img, pixel_size_um=0.5, nucleus_diameter_um=6.0, method="cellpose", model=model,
                   cellpose_diameter_um=10.0)
    assert model.calls[-1]["diameter"] == pytest.approx(20.0)


def test_fake_model_bad_output_is_an_error():
    class Bad:
        def eval(self, x, **kw):
            return np.zeros((3, 3), np.int32), None, None

    with pytest.raises(ValueError, match="masks of shape"):
        segment_nuclei(np.ones((8, 8)), pixel_size_um=1, nucleus_diameter_um=4, method="cellpose", model=Bad())


def test_tiling_and_stitching_with_fake_model():
    img, truth = _spots((300, 300))
    cyx = img[None]
    base = {"method": "cellpose", "nucleus_diameter_um": 6.0, "min_nucleus_area_um2": 5.0}
    whole, _ = segment_image(cyx, channels=["DAPI"], pixel_size_um=0.5, **base, model=FakeModel())
    model = FakeModel()
    tiled, cells = segment_image(cyx, channels=["DAPI"], pixel_size_um=0.5, **base, tile_size_px=64,
                                 tile_overlap_um=10.0, model=model)
    assert len(model.calls) == 25  # 5 x 5 tiles
    # every tile is normalised with the same image-level percentiles
    lhs = {tuple(np.asarray(c["normalize"]["lowhigh"]).ravel()) for c in model.calls}
    assert len(lhs) == 1
    assert whole.max() == truth.max() == tiled.max()
    s = match_scores(whole, tiled, thresholds=(0.9,))
    assert s["tp"][0] == truth.max()  # every spot, including those on seams, is one whole object
    np.testing.assert_array_equal(cells[tiled > 0], tiled[tiled > 0])


def test_configured_channels_reach_the_model_channels_last():
    img, truth = _spots((96, 96))
    mem = np.random.default_rng(2).uniform(0, 50, img.shape)
    cyx = np.stack([img, mem, np.full(img.shape, 7.0)])  # DAPI, CD45, other
    opts = {"method": "cellpose", "nucleus_diameter_um": 6.0, "min_nucleus_area_um2": 1.0,
            "cellpose_channels": ["CD45", "DAPI"]}
    model = FakeModel()
    nuc, _ = segment_image(cyx, channels=["DAPI", "CD45", "CD3"], pixel_size_um=0.5, **opts, model=model)
    call = model.calls[0]
    # cellpose 4 layout: (Y, X, C) with channel_axis=2, channels in the configured order
    assert call["shape"] == (96, 96, 2) and call["channel_axis"] == 2
    np.testing.assert_array_equal(call["x"][..., 0], mem.astype(np.float32))
    np.testing.assert_array_equal(call["x"][..., 1], img.astype(np.float32))
    # image-level normalisation: (1st, 99th percentile) per channel, in the same order
    lh = np.asarray(call["normalize"]["lowhigh"])
    np.testing.assert_allclose(lh, [np.percentile(mem.astype(np.float32), [1, 99]), np.percentile(img, [1, 99])],
                               rtol=1e-6)
    assert segmentation_report(truth, nuc)["f1_50"] == 1.0
    # a single nuclear channel stays a 2-D image (no channel_axis)
    model = FakeModel()
    segment_image(cyx, channels=["DAPI", "CD45", "CD3"], pixel_size_um=0.5, model=model,
                  **{**opts, "cellpose_channels": None})
    assert model.calls[0]["shape"] == (96, 96) and model.calls[0]["channel_axis"] is None
    assert np.asarray(model.calls[0]["normalize"]["lowhigh"]).shape == (1, 2)
    # standalone: cellpose normalises by itself
    segment_nuclei(np.stack([mem, img]), pixel_size_um=0.5, nucleus_diameter_um=6.0, method="cellpose", model=model)
    assert model.calls[-1]["shape"] == (96, 96, 2) and model.calls[-1]["normalize"] is True
    assert segmentation_provenance(**opts)["cellpose_channels"] == ["CD45", "DAPI"]


def test_configured_channels_errors():
    cyx = np.zeros((4, 16, 16))
    names = ["DAPI", "CD45", "CD3", "CD8"]
    with pytest.raises(ConfigError, match=r"segmentation.cellpose.channels: cellpose 4 reads at most 3"):
        segment_image(cyx, channels=names, pixel_size_um=0.5, method="cellpose", cellpose_channels=names,
                      model=FakeModel())
    with pytest.raises(ChannelError, match="panCK"):
        segment_image(cyx, channels=names, pixel_size_um=0.5, method="cellpose", cellpose_channels=["panCK", "DAPI"],
                      model=FakeModel())
    with pytest.raises(ValueError, match="at most 3 channels"):
        segment_nuclei(cyx, pixel_size_um=1, nucleus_diameter_um=4, method="cellpose", model=FakeModel())
    with pytest.raises(ValueError, match="lowhigh has 1 rows for 2 channels"):
        _cellpose.cellpose_nuclei(cyx[:2], pixel_size_um=1, nucleus_diameter_um=4, model=FakeModel(),
                                  lowhigh=[[0, 1]])


def test_missing_cellpose_is_actionable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cellpose", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'chemozone\[cellpose\]'"):
        segment_nuclei(np.ones((8, 8)), pixel_size_um=1, nucleus_diameter_um=4, method="cellpose")


@pytest.mark.cellpose
def test_missing_weights_refuse_to_download(monkeypatch, tmp_path):
    models = pytest.importorskip("cellpose.models")
    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)
    monkeypatch.setattr(models, "get_user_models", lambda: [])

    def no_download(*a, **k):  # pragma: no cover - must never be reached
        raise AssertionError("tried to download")

    monkeypatch.setattr(models, "cache_model_path", no_download)
    with pytest.raises(MissingDependencyError, match=r"weights of cellpose model 'cpsam' are not on this machine"):
        _cellpose.resolve_model_path("cpsam")
    with pytest.raises(ConfigError, match=r"segmentation.cellpose.model: 'nope' is neither"):
        _cellpose.resolve_model_path("nope")
    with pytest.raises(ConfigError, match="is neither an existing file"):
        _cellpose.load_cellpose_model(str(tmp_path / "missing.pth"))
    (tmp_path / "cpsam").write_bytes(b"x")
    assert _cellpose.resolve_model_path("cpsam") == tmp_path / "cpsam"


def test_provenance_records_version_and_model(tmp_path):
    ckpt = tmp_path / "my_model.pth"
    ckpt.write_bytes(b"weights")
    p = segmentation_provenance(method="cellpose", cellpose_model=str(ckpt))
    assert p["method"] == "cellpose" and p["cellpose_model"] == str(ckpt)
    assert p["cellpose_model_path"] == str(ckpt.resolve()) and p["cellpose_model_size_bytes"] == 7
    from importlib import metadata

    try:
        expected = metadata.version("cellpose")
    except metadata.PackageNotFoundError:
        expected = None
    assert p["cellpose_version"] == expected


@pytest.mark.slow
@pytest.mark.cellpose
@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # raised inside cellpose/torch
def test_real_cellpose_on_random_weights(tmp_path):
    pytest.importorskip("cellpose")
    torch = pytest.importorskip("torch")
    from cellpose import vit

    torch.manual_seed(0)
    ckpt = tmp_path / "random_cpsam.pth"
    vit.CPSAM().save_model(str(ckpt))
    img, _ = _spots((128, 128))
    opts = {"method": "cellpose", "nucleus_diameter_um": 6.0, "cellpose_model": str(ckpt), "cellpose_batch_size": 1}
    nuc, cells = segment_image(img[None], channels=["DAPI"], pixel_size_um=0.5, **opts)
    assert nuc.dtype == np.uint32 and nuc.shape == (128, 128)
    assert cells.dtype == np.uint32 and cells.shape == (128, 128)
    assert segmentation_provenance(**opts)["cellpose_version"]


@pytest.mark.cellpose
@pytest.mark.skipif(not os.environ.get("CHEMOZONE_CELLPOSE_MODEL"), reason="set CHEMOZONE_CELLPOSE_MODEL to a local model")
def test_real_cellpose_accuracy_with_local_model():
    pytest.importorskip("cellpose")
    synth = pytest.importorskip("chemozone.synth")
    s = synth.generate_sample(size_px=256, dose_gy=0, seed=4)
    dapi = s["image"][s["channels"].index("DAPI")]
    lab = segment_nuclei(dapi, pixel_size_um=s["pixel_size_um"], nucleus_diameter_um=8.0, method="cellpose",
                         cellpose_model=os.environ["CHEMOZONE_CELLPOSE_MODEL"])
    assert segmentation_report(s["nuclei"], lab)["f1_50"] >= 0.9
