"""Tests of the synthetic cohort generator (chemozone.synth): determinism, truth consistency, marker
compartments, the intended biology, and that the cohort is readable by the rest of chemozone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from chemozone import synth
from chemozone.config import load_config
from chemozone.errors import ConfigError
from chemozone.io import read_image
from chemozone.samples import load_samples
from chemozone.synth._scene import build_scene


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth.generate_cohort(tmp_path_factory.mktemp("tiny"), preset="tiny", seed=0)


@pytest.fixture(scope="module")
def sample20():
    return synth.generate_sample(size_px=512, dose_gy=20, radiation="photon", seed=5, sample_id="s20")


def _scenes(doses, seeds, radiation="photon", size=768, **params):
    out = []
    for d in doses:
        for s in seeds:
            sc = build_scene((size, size), dose_gy=d, radiation=radiation, patient={}, seed=[s, 11],
                             channels=synth.DEFAULT_CHANNELS, params={**synth.truth_parameters(), **params},
                             tear=False, out_of_focus=False)
            out.append((d, s, sc["cells"]))
    return out


# ------------------------------------------------------------------------------------ outputs
def test_cohort_layout_and_readers(tiny):
    samples = load_samples(tiny / "samples.csv")
    assert list(samples.columns[:6]) == ["sample_id", "image", "patient", "radiation", "dose_gy", "replicate"]
    assert len(samples) == 4 and set(samples["dose_gy"]) == {0.0, 10.0}
    cfg = load_config(tiny / "config.yaml")
    assert [z.name for z in cfg.zones] == ["CXCL8", "CXCL10", "CCL5", "tumor"]
    assert {r.cell_type for r in cfg.phenotypes.rules} <= set(synth.CELL_TYPES)
    assert cfg.panel.pixel_size_um == 0.5
    img = read_image(samples["image"][0])
    assert img.channels == synth.DEFAULT_CHANNELS and img.pixel_size_um == pytest.approx(0.5)
    assert img.data.dtype == np.uint16 and img.data.shape == (15, 256, 256)
    import json

    meta = json.loads((tiny / "truth" / "cohort.json").read_text())
    assert meta["parameters"]["modules"]["CXCL10"]["conservation"]["carbon"] == 0.5
    assert set(meta["samples"]) == set(samples["sample_id"])
    for sid in samples["sample_id"]:
        for f in ["nuclei.tif", "cells.tif", "tissue.tif", "zone_CXCL8.tif", "zone_CXCL10.tif", "zone_CCL5.tif",
                  "cells.parquet"]:
            assert (tiny / "truth" / sid / f).is_file()


def test_same_seed_same_bytes(tiny, tmp_path):
    again = synth.generate_cohort(tmp_path / "again", preset="tiny", seed=0)
    assert _hashes(tiny) == _hashes(again)
    other = synth.generate_cohort(tmp_path / "other", preset="tiny", seed=1, patients=1)
    a = tifffile.imread(tiny / "images" / "P01_sham_0Gy_r1.ome.tif")
    b = tifffile.imread(other / "images" / "P01_sham_0Gy_r1.ome.tif")
    assert not np.array_equal(a, b)


def test_truth_labels_agree_with_table(tiny):
    for sid in pd.read_csv(tiny / "samples.csv")["sample_id"]:
        d = tiny / "truth" / sid
        cells = tifffile.imread(d / "cells.tif")
        nuclei = tifffile.imread(d / "nuclei.tif")
        tissue = tifffile.imread(d / "tissue.tif")
        tab = pd.read_parquet(d / "cells.parquet")
        assert cells.dtype == np.uint32 and nuclei.dtype == np.uint32 and tissue.dtype == np.uint8
        ids = np.unique(cells[cells > 0])
        assert np.array_equal(ids, np.sort(tab["cell_id"].to_numpy()))
        assert set(np.unique(nuclei[nuclei > 0])) == set(ids)
        assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])  # nuclei lie inside their own cell
        assert not np.any(cells[tissue == 0])
        idx = tab["cell_id"].to_numpy()
        cy, cx = np.array(ndi.center_of_mass(np.ones_like(cells), cells, idx)).T
        assert np.allclose(tab["x_um"], cx * 0.5) and np.allclose(tab["y_um"], cy * 0.5)
        area = ndi.sum_labels(np.ones_like(cells), cells, idx) * 0.25
        assert np.allclose(tab["area_um2"], area)
        assert set(tab["cell_type"]) <= set(synth.CELL_TYPES)
        for col in ["sample_id", "cell_id", "x_um", "y_um", "cell_type", "nucleus_area_um2", "area_um2",
                    "senescent", "exogenous", "CD3_pos", "CXCR2_pos", "CXCL8_pos", "p21_pos"]:
            assert col in tab.columns


def test_generate_sample_matches_files(sample20):
    s = sample20
    assert s["image"].shape == (15, 512, 512) and s["image"].dtype == np.uint16
    t = s["truth"]
    assert (t["sample_id"] == "s20").all()
    assert set(np.unique(s["cells"])) - {0} == set(t["cell_id"])
    # nuclear sizes by type (equivalent diameter of the truth nuclei, intact cells away from the rim)
    ok = ~t["damaged"]
    diam = 2 * np.sqrt(t["nucleus_area_um2"] / np.pi)
    tum = diam[ok & (t["cell_type"] == "Tumor")].median()
    lym = diam[ok & t["cell_type"].isin(["CD8 T", "CD4 T", "NK"])].median()
    assert 8 < tum < 15 and 5 < lym < 8 and tum > lym + 3


# ------------------------------------------------------------------------------ compartments
def _mean_by_label(img, labels, ids):
    return ndi.mean(img.astype(float), labels, ids)


def test_markers_in_their_cells_and_compartments(sample20):
    s = sample20
    ch = {c: i for i, c in enumerate(s["channels"])}
    t = s["truth"].set_index("cell_id")
    nuc, cells, img = s["nuclei"], s["cells"], s["image"]
    ids = t.index.to_numpy()
    p21 = pd.Series(_mean_by_label(img[ch["p21"]], nuc, ids), index=ids)
    assert p21[t["p21_pos"]].mean() > 5 * p21[~t["p21_pos"]].mean()
    # p21 is nuclear: in p21+ cells, nucleus >> cytoplasm
    cyto = np.where(nuc == 0, cells, 0)
    sen = ids[t["p21_pos"].to_numpy()]
    assert _mean_by_label(img[ch["p21"]], nuc, sen).mean() > 3 * _mean_by_label(img[ch["p21"]], cyto, sen).mean()
    # CD3 is membranous: in CD3+ cells the cell edge is brighter than the nucleus centre
    edge = cells * (ndi.grey_erosion(cells, size=3) != cells)
    cd3 = ids[t["CD3_pos"].to_numpy()]
    assert len(cd3) > 5
    assert _mean_by_label(img[ch["CD3"]], edge, cd3).mean() > 1.5 * _mean_by_label(
        img[ch["CD3"]], ndi.grey_erosion(nuc, size=5), cd3).mean()
    cd3_all = pd.Series(_mean_by_label(img[ch["CD3"]], cells, ids), index=ids)
    assert cd3_all[t["CD3_pos"]].mean() > 2.5 * cd3_all[~t["CD3_pos"]].mean()
    # panCK is cytoplasmic in tumor cells
    tum = ids[(t["cell_type"] == "Tumor").to_numpy()]
    assert _mean_by_label(img[ch["panCK"]], cyto, tum).mean() > 2 * _mean_by_label(img[ch["panCK"]], nuc, tum).mean()
    # chemokine dots sit in producers' cytoplasm
    for m in synth.MODULES:
        prod = t[f"{m}_pos"]
        v = pd.Series(_mean_by_label(img[ch[m]], cyto, ids), index=ids)
        assert prod.sum() > 3 and v[prod].mean() > 4 * v[~prod & (t["cell_type"] == "Tumor")].mean()


def test_truth_zone_is_recovered_by_smoothing_and_threshold():
    """Smoothing the chemokine channel by 10 µm and thresholding at background + amplitude/2 gives the zone."""
    sham = synth.generate_sample(size_px=512, dose_gy=0, seed=21, sample_id="sham")
    irr = synth.generate_sample(size_px=512, dose_gy=10, seed=22, sample_id="irr")
    ch = synth.DEFAULT_CHANNELS.index("CXCL8")
    sigma_px = 10 / 0.5
    sm0 = ndi.gaussian_filter(sham["image"][ch].astype(float), sigma_px)
    bg = np.median(sm0[(sham["tissue"] > 0) & (sham["zones"]["CXCL8"] == 0)])
    sm = ndi.gaussian_filter(irr["image"][ch].astype(float), sigma_px)
    amp = synth.truth_parameters()["chemokine_amplitude"] * irr["info"]["stain_scale"]["CXCL8"]
    pred = (sm >= bg + 0.5 * amp) & (irr["tissue"] > 0)
    truth = irr["zones"]["CXCL8"] > 0
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert truth.mean() > 0.05 and iou >= 0.8


# ---------------------------------------------------------------------------------- biology
def test_producer_probability_rises_then_plateaus():
    p = [synth.producer_probability(d, "photon", "CXCL8") for d in (0, 2, 5, 10, 20)]
    assert all(b > a for a, b in zip(p, p[1:]))
    assert (p[4] - p[3]) < 0.2 * (p[3] - p[0])
    # carbon is more effective per Gy, and CXCL10 is only partly conserved after carbon
    assert synth.producer_probability(2, "carbon", "CXCL8") > synth.producer_probability(2, "photon", "CXCL8")
    assert synth.producer_probability(20, "carbon", "CXCL10") < 0.7 * synth.producer_probability(20, "photon", "CXCL10")
    # realised fractions in the truth follow the law
    frac = {}
    for d, _, c in _scenes([0, 10, 20], [1, 2, 3]):
        tum = c["type"] == synth.CELL_TYPES.index("Tumor")
        frac.setdefault(d, []).append(((c["amount"]["CXCL8"][tum] > 0).mean(), c["senescent"][tum].mean(),
                                       (c["amount"]["CXCL8"][tum & c["senescent"]] > 0).mean(),
                                       (c["amount"]["CXCL8"][tum & ~c["senescent"]] > 0).mean()))
    f = {d: np.mean(v, axis=0) for d, v in frac.items()}
    assert f[0][0] < 0.06 and f[10][0] > 5 * f[0][0]
    assert abs(f[20][0] - f[10][0]) < 0.25 * (f[10][0] - f[0][0])
    assert f[20][1] > 3 * f[0][1]  # senescence rises with dose
    # producers mildly enriched among senescent cells (odds 3 on top of strong per-module patches, so that
    # the senescence link does not co-localise the modules)
    assert f[20][2] > f[20][3]


def _cognate_counts(scenes, *, other_receptors_too: bool) -> dict[tuple, np.ndarray]:
    """(inside, outside) a module's zone of its lineage's receptor+ cells, receptor− cells (optionally only those
    carrying none of the other modules' receptors) and resident immune cells (the reference)."""
    T = synth.CELL_TYPES.index
    counts: dict[tuple, np.ndarray] = {}
    for _, _, c in scenes:
        for m, rec, lin in [("CXCL8", "CXCR2", "NK"), ("CXCL10", "CXCR3", "CD8 T"), ("CCL5", "CCR5", "CD8 T")]:
            lin_cells = c["type"] == T(lin)
            # reference: resident immune cells, placed independently of the zones (uniform per area; tumor
            # cells are not a fair reference, they are denser in the nests where the zones lie)
            allc = ~c["exogenous"] & np.isin(c["type"], [T(t) for t in synth.IMMUNE_TYPES])
            neg = lin_cells & ~c["receptors"][rec]
            if not other_receptors_too:
                for other in set(synth.MODULES.values()) - {rec}:
                    neg &= ~c["receptors"][other]
            z = c["in_zone"][m]
            for sign, sel in (("+", lin_cells & c["receptors"][rec]), ("-", neg), ("all", allc)):
                counts.setdefault((m, sign), np.zeros(2))
                counts[(m, sign)] += [np.sum(sel & z), np.sum(sel & ~z)]
    return counts


def _log2_enrichment(counts, m, sign):
    ref = counts[(m, "all")]  # zone share of resident immune cells: the expectation without attraction
    inside, outside = counts[(m, sign)]
    return np.log2(((inside + 0.5) / ref[0]) / ((outside + 0.5) / ref[1]))


def test_cognate_receptor_cells_enriched_in_their_zone_others_not_with_separate_territories():
    """The design before issue 15 (``territory_correlation: -0.5``, an option now): modules in separate
    territories, so receptor− cells, many of which carry another module's receptor, are not drawn in."""
    counts = _cognate_counts(_scenes([10, 20], [1, 2, 3, 4], territory_correlation=-0.5), other_receptors_too=True)
    for m in synth.MODULES:
        assert _log2_enrichment(counts, m, "+") > 1.0, m
        # receptor− cells are not drawn in (they may be depleted: many carry another module's receptor and
        # are drawn to that module's territory, which the zones of this module mostly avoid)
        assert _log2_enrichment(counts, m, "-") < 0.6, m
        assert _log2_enrichment(counts, m, "+") - _log2_enrichment(counts, m, "-") > 1.0, m


def test_cognate_receptor_cells_enriched_in_co_localised_zones_and_the_right_control():
    """Default (co-localised modules, ``territory_correlation: 0.5``): receptor+ cells are enriched in their zone.
    A receptor− cell that carries another module's receptor is drawn to that module's zone, which overlaps this
    one, so the marginal receptor− enrichment is positive (README, "Receptor− controls when zones
    co-localise"); the control that isolates the cognate effect is receptor− cells with no other module's
    receptor, which are not drawn in."""
    scenes = _scenes([10, 20], [1, 2, 3, 4])
    marginal = _cognate_counts(scenes, other_receptors_too=True)
    control = _cognate_counts(scenes, other_receptors_too=False)
    for m in synth.MODULES:
        assert _log2_enrichment(control, m, "+") > 1.0, m
        assert _log2_enrichment(control, m, "-") < 0.6, m
        assert _log2_enrichment(control, m, "+") - _log2_enrichment(control, m, "-") > 1.0, m
    # the co-localisation is there: some module's marginal receptor− cells are drawn into its zone
    assert max(_log2_enrichment(marginal, m, "-") for m in synth.MODULES) > 0.6


def test_exogenous_pool_is_fixed_and_cognate_cells_gather_in_zones_with_dose():
    """The co-cultured pool does not grow with dose; its cognate receptor+ cells move into the zones."""
    T = synth.CELL_TYPES.index
    res = {}
    for d, _, c in _scenes([0, 20], [1, 2, 3]):
        ex = c["exogenous"]
        cog = sum(int((ex & c["receptors"][r] & c["in_zone"][m] & np.isin(c["type"], [T("NK"), T("CD8 T")])).sum())
                  for m, r in synth.MODULES.items())
        res.setdefault(d, []).append((ex.sum(), cog))
    n = {d: np.mean(v, axis=0) for d, v in res.items()}
    assert 0.7 < n[20][0] / n[0][0] < 1.4  # pool size independent of dose
    assert n[20][1] > 4 * max(n[0][1], 1.0)


def test_modules_are_spatially_separable():
    """Each module has its own patch field: zones of two modules overlap about as often as chance predicts
    (not much more), so receptor− cells attracted by another module are not concentrated in a zone."""
    ratios = []
    for _, _, c in _scenes([20], [1, 2, 3, 4]):
        z = c["in_zone"]
        mods = list(synth.MODULES)
        for i in range(3):
            for j in range(i + 1, 3):
                a, b = z[mods[i]], z[mods[j]]
                if a.sum() and b.sum():
                    ratios.append((a & b).mean() / (a.mean() * b.mean()))
    assert np.median(ratios) < 2.0


def test_enough_attracted_cognate_cells_per_lineage():
    """Every configured cognate lineage gets several attracted receptor+ cells per irradiated 512² sample."""
    pairs = synth.cohort_config()["spatial"]["cognate_pairs"]
    T = synth.CELL_TYPES.index
    tot: dict[tuple, list] = {}
    for _, _, c in _scenes([20], [1, 2, 3, 4], size=512):
        for p in pairs:
            for lin in p["cell_types"]:
                sel = c["exogenous"] & (c["type"] == T(lin)) & c["receptors"][p["receptor"]] & c["in_zone"][p["zone"]]
                tot.setdefault((p["zone"], lin), []).append(int(sel.sum()))
    means = {k: np.mean(v) for k, v in tot.items()}
    assert len(means) == 6 and min(means.values()) >= 3.0, means


# ------------------------------------------------------------------------------- options, CLI
def test_channel_subset_and_extra_channels():
    s = synth.generate_sample(size_px=128, dose_gy=5, seed=3, channels=["DAPI", "CD3", "Ki67", "MyMarker"])
    assert s["image"].shape == (4, 128, 128)
    assert {"Ki67_pos", "MyMarker_pos", "CD3_pos"} <= set(s["truth"].columns)
    cfg = synth.cohort_config(["DAPI", "CD3", "CD8", "panCK", "CXCL8", "CXCR2"])
    from chemozone.config import config_from_dict

    c = config_from_dict(cfg)
    assert sorted(r.cell_type for r in c.phenotypes.rules) == ["CD8 T", "Tumor"]
    assert [p.zone for p in c.spatial.cognate_pairs] == ["CXCL8"]


def test_errors():
    with pytest.raises(ConfigError, match="'DAPI' is required"):
        synth.generate_sample(size_px=64, channels=["CD3", "CD8"])
    with pytest.raises(ConfigError, match="more than once"):
        synth.generate_sample(size_px=64, channels=["DAPI", "CD3", "CD3"])
    with pytest.raises(ConfigError, match="preset 'huge' is unknown"):
        synth.generate_cohort("/nonexistent-never-written", preset="huge")
    with pytest.raises(ConfigError, match="--patients must be >= 1"):
        synth.generate_cohort("/nonexistent-never-written", preset="tiny", patients=0)
    with pytest.raises(ConfigError, match="--size must be >= 64"):
        synth.generate_cohort("/nonexistent-never-written", preset="tiny", size_px=8)
    with pytest.raises(ConfigError, match="larger than 4096"):
        synth.generate_sample(size_px=5000)


def test_cli(tmp_path, capsys):
    from chemozone.cli import main

    assert main(["synth", str(tmp_path / "c"), "--preset", "tiny", "--patients", "1", "--size", "128",
                 "--seed", "3", "--channels", "DAPI,panCK,CD3,CXCL8"]) == 0
    assert len(list((tmp_path / "c" / "images").glob("*.ome.tif"))) == 2
    assert read_image(tmp_path / "c" / "images" / "P01_sham_0Gy_r1.ome.tif").channels == ["DAPI", "panCK", "CD3", "CXCL8"]
    assert main(["synth", str(tmp_path / "d"), "--preset", "tiny", "--channels", "CD3"]) == 1
    assert "DAPI" in capsys.readouterr().err


def test_cohort_config_for_a_channel_subset_passes_phenotype_validation():
    """A smaller panel (e.g. the large preset's 8 channels) drops rules, flags and lineages it cannot use."""
    from chemozone.config import config_from_dict
    from chemozone.phenotype import validate_phenotypes
    from chemozone.synth import cohort_config

    channels = ["DAPI", "panCK", "CD45", "CD3", "CD8", "CD56", "CXCR2", "CXCL8"]
    cfg = config_from_dict(cohort_config(channels))
    ph = cfg.phenotypes
    validate_phenotypes(channels, markers=ph.markers, rules=ph.rules, receptors=ph.receptors,
                        receptor_cell_types=ph.receptor_cell_types, default_cell_type=ph.default_cell_type)
    types = {r.cell_type for r in cfg.phenotypes.rules}
    assert "CD4 T" not in types and set(cfg.phenotypes.receptor_cell_types) <= types
    assert all(set(p.cell_types) <= types for p in cfg.spatial.cognate_pairs)
