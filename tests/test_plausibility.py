"""chemozone.plausibility: every warning from its pure check (bounds computed by hand), the gate and zone-threshold
warnings from real ``compute_gates`` / ``compute_zone_thresholds`` output, and end to end through ``chemozone run``
(run.json, the CLI summary and the report) on a cohort with an empty sample."""
from __future__ import annotations

import json
import math
import re
import shutil
import types

import numpy as np
import pandas as pd
import pytest

from chemozone.cli import _print_summary, main
from chemozone.config import MarkerConfig, ZoneConfig
from chemozone.layout import RunLayout
from chemozone.plausibility import (
    ABUNDANT_POSITIVE_FRACTION,
    MAX_ZONE_FRACTION,
    MIN_TISSUE_FRACTION,
    MIN_ZONE_FRACTION,
    RARE_POSITIVE_FRACTION,
    density_bounds_per_mm2,
    format_warning,
    gate_checks,
    marker_checks,
    pixel_size_checks,
    plausible_pixel_size,
    positive_counts,
    sample_checks,
    warning_record,
    zone_area_checks,
    zone_threshold_checks,
)


def _one(records, code):
    hits = [w for w in records if w["code"] == code]
    assert len(hits) == 1, records
    return hits[0]


# ------------------------------------------------------------------------------------------ sample checks
def test_density_bounds_are_the_hand_computed_packing_and_spacing():
    low, high = density_bounds_per_mm2(8.0)
    assert low == pytest.approx(1e6 / (12 * 8.0) ** 2)  # one cell per (12 diameters)²: 108.5 / mm²
    assert high == pytest.approx(2 * 1e6 / (math.sqrt(3) / 2 * 8.0 ** 2))  # 2 × hexagonal packing: 36 084 / mm²
    low2, high2 = density_bounds_per_mm2(9.0, 6.5)  # the synthetic cohort's config
    assert low2 == pytest.approx(1e6 / 108 ** 2)
    assert high2 == pytest.approx(2e6 / (math.sqrt(3) / 2 * 6.5 ** 2))


@pytest.mark.parametrize("kw, code, match, value", [
    (dict(n_cells=0, tissue_fraction=0.6), "no_cells", r"^0 cells segmented: the sample's tables are empty", 0.0),
    (dict(n_cells=500, tissue_fraction=0.02), "low_tissue", r"^tissue covers 2\.0 % of the field \(< 3 %\)", 0.02),
    (dict(n_cells=50, tissue_fraction=1.0), "low_cell_density",
     r"^50 cells per mm² of tissue \(50 cells in 1 mm²\), below the 109/mm²", 50.0),
    (dict(n_cells=40_000, tissue_fraction=1.0), "high_cell_density",
     r"^40000 cells per mm² of tissue .* above the 36084/mm² that packed nuclei can reach", 40_000.0),
])
def test_each_sample_warning(kw, code, match, value):
    recs = sample_checks("s1", field_area_mm2=1.0, nucleus_diameter_um=8.0, **kw)
    w = _one(recs, code)
    assert w["sample"] == "s1" and w["value"] == pytest.approx(value)
    assert re.search(match, w["message"]), w["message"]


def test_sample_checks_quiet_inside_the_bounds():
    low, high = density_bounds_per_mm2(8.0)
    for n in (math.ceil(low), math.floor(high), 3800):  # 3 800 / mm²: the synthetic demo cohort
        assert sample_checks("s", n_cells=n, tissue_fraction=1.0, field_area_mm2=1.0, nucleus_diameter_um=8.0) == []
    # tissue at exactly the threshold, and a density on the tissue (not the field): 100 cells in 0.03 mm²
    assert sample_checks("s", n_cells=100, tissue_fraction=MIN_TISSUE_FRACTION, field_area_mm2=1.0,
                         nucleus_diameter_um=8.0) == []
    # no nucleus size to judge by: only cells and tissue are checked
    assert sample_checks("s", n_cells=1, tissue_fraction=1.0, field_area_mm2=1.0, nucleus_diameter_um=None) == []


def test_no_cells_and_no_tissue_both_warn_and_no_density_is_invented():
    codes = [w["code"] for w in sample_checks("s", n_cells=0, tissue_fraction=0.0, field_area_mm2=1.0,
                                              nucleus_diameter_um=8.0)]
    assert codes == ["no_cells", "low_tissue"]


# ------------------------------------------------------------------------------------------ marker checks
def _counts(rows):
    return pd.DataFrame(rows, columns=["sample_id", "marker", "n_cells", "n_positive"])


def test_marker_rarely_positive_in_the_cohort():
    w = _one(marker_checks(_counts([("a", "CD4", 5000, 2), ("b", "CD4", 5000, 2)])), "marker_rarely_positive")
    assert w["sample"] is None and w["value"] == pytest.approx(4 / 10_000)
    assert re.search(r"^CD4 is positive in 4 of 10000 cells of the cohort \(0\.04 % < 0\.1 %\)", w["message"])


def test_marker_mostly_positive_in_the_cohort_and_in_a_sample():
    recs = marker_checks(_counts([("a", "CD3", 1000, 990), ("b", "CD3", 1000, 960), ("c", "CD3", 30, 30)]))
    cohort = [w for w in recs if w["sample"] is None]
    assert len(cohort) == 1 and cohort[0]["code"] == "marker_mostly_positive"
    assert re.search(r"^CD3 is positive in 1980 of 2030 cells of the cohort \(97\.5 % > 95 %\)", cohort[0]["message"])
    per_sample = {w["sample"]: w for w in recs if w["sample"] is not None}
    assert set(per_sample) == {"a", "b"}  # c has fewer than 50 cells: its 100 % is not judged
    assert re.search(r"^CD3 is positive in 990 of 1000 cells \(99 % > 95 %\)", per_sample["a"]["message"])


def test_rare_populations_and_absent_chemokines_do_not_warn():
    # a 0.3 % population (the rarest the gating benchmark covers), and a chemokine absent from the sham samples
    rows = [("sham1", "CD56", 2000, 6), ("irr1", "CD56", 2000, 6),
            ("sham1", "CXCL10", 2000, 0), ("sham2", "CXCL10", 2000, 0), ("irr1", "CXCL10", 2000, 600),
            ("irr1", "panCK", 2000, int(ABUNDANT_POSITIVE_FRACTION * 2000))]
    assert marker_checks(_counts(rows)) == []
    assert RARE_POSITIVE_FRACTION < 6 / 2000


def test_positive_counts_of_a_cells_table():
    cells = pd.DataFrame({"CD3_pos": [True, False, True, np.nan], "CD3_cell": [1.0, 2, 3, 4]})
    assert positive_counts(cells, "s") == [{"sample_id": "s", "marker": "CD3", "n_cells": 4, "n_positive": 2}]


# ----------------------------------------------------------------------------- gates and zone thresholds
def _sheet():
    return pd.DataFrame({"sample_id": ["P1_sham", "P1_irr", "P2_irr"], "patient": ["P1", "P1", "P2"],
                         "radiation": ["sham", "photon", "photon"], "dose_gy": [0.0, 10.0, 10.0]})


def test_gate_fallback_of_a_pooled_unimodal_marker_is_one_cohort_warning():
    from chemozone.phenotype import compute_gates

    rng = np.random.default_rng(0)
    cells = pd.DataFrame({"sample_id": np.repeat(["P1_sham", "P1_irr", "P2_irr"], 400),
                          "CD68_cell": rng.normal(500, 20, 1200)})
    gates = compute_gates(cells, _sheet(), markers={"CD68": MarkerConfig(gate={"method": "pooled",
                                                                              "pooled_method": "gmm"})})
    assert (gates["warning"] != "").all()  # the gmm fell back on a single population
    w = _one(gate_checks(gates), "gate_warning")
    assert w["sample"] is None and w["value"] == pytest.approx(gates["threshold_raw"].iloc[0])
    assert re.search(r"^gate of CD68 \(all 3 samples\): .*fallback", w["message"])


def test_missing_reference_sample_of_a_reference_gate():
    from chemozone.phenotype import compute_gates

    rng = np.random.default_rng(1)
    cells = pd.DataFrame({"sample_id": np.repeat(["P1_sham", "P1_irr", "P2_irr"], 300),
                          "CD3_cell": rng.lognormal(5, 0.5, 900)})
    gate = {"method": "reference", "reference": {"dose_gy": 0}, "group_by": "patient", "quantile": 0.99}
    gates = compute_gates(cells, _sheet(), markers={"CD3": MarkerConfig(gate=gate)})
    recs = gate_checks(gates)
    w = _one(recs, "missing_reference")
    assert w["sample"] == "P2_irr"
    assert re.search(r"^gate of CD3: no reference sample with patient=P2", w["message"])
    assert len(recs) == 1  # P1's samples have their own reference


def test_missing_reference_sample_of_a_zone_threshold():
    from chemozone.zones import compute_zone_thresholds, signal_summary

    rng = np.random.default_rng(2)
    summaries = pd.concat([signal_summary(rng.gamma(2, 50, (1, 20, 20)), None, sample_id=s, zone="CXCL8",
                                          channels=["CXCL8"]) for s in _sheet()["sample_id"]], ignore_index=True)
    zone = ZoneConfig(name="CXCL8", channels=["CXCL8"], threshold={"mode": "reference", "group_by": "patient"})
    thr = compute_zone_thresholds(summaries, _sheet(), zones=[zone])
    w = _one(zone_threshold_checks(thr), "missing_reference")
    assert w["sample"] == "P2_irr" and w["value"] == pytest.approx(thr["threshold"].iloc[2])
    assert re.search(r"^zone threshold of CXCL8/CXCL8: no reference sample with patient=P2", w["message"])
    per_sample = ZoneConfig(name="CXCL8", channels=["CXCL8"], threshold={"mode": "per_sample"})
    w = _one(zone_threshold_checks(compute_zone_thresholds(summaries, _sheet(), zones=[per_sample])),
             "zone_threshold_warning")
    assert w["sample"] is None and re.search(r"\(all 3 samples\): per-sample relative threshold", w["message"])


def test_pixel_size_records_and_their_text():
    w = _one(pixel_size_checks("s", pixel_size_um=0.5, source="config", note="the file stores no pixel size"),
             "pixel_size_from_config")
    assert format_warning(w) == ("[pixel_size_from_config] sample 's': 0.5 µm/px from panel.pixel_size_um: "
                                 "the file stores no pixel size")
    assert _one(pixel_size_checks("s", pixel_size_um=0.65, source="file", note="differs"),
                "pixel_size_conflict")["value"] == 0.65
    assert pixel_size_checks("s", pixel_size_um=0.65, source="file", note="") == []
    assert [plausible_pixel_size(v) for v in (0.05, 5.0, 0.049, 5.1, float("nan"), 352.8)] == [
        True, True, False, False, False, False]


def test_cli_summary_prints_warnings_after_the_done_line(capsys, tmp_path):
    recs = [warning_record("no_cells", "s2", "0 cells segmented", 0)] + [
        warning_record("gate_warning", f"s{i}", f"gate of M{i}: fallback", 1.0) for i in range(40)] + [
        warning_record("marker_rarely_positive", None, "CD4 is positive in 0 of 10 cells", 0.0)]
    res = types.SimpleNamespace(out=tmp_path, statuses={"s1": "done", "s2": "done", "s3": "failed"},
                                errors={"s3": "sample 's3' failed in segment: boom"}, warnings=recs)
    _print_summary(res)
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0] == (f"2/3 samples done (1 with 0 cells: s2; 42 warnings, see below and run.json); "
                        f"results in {tmp_path}")
    assert lines[1] == "warning: [marker_rarely_positive] cohort: CD4 is positive in 0 of 10 cells"
    assert lines[2] == "warning: [no_cells] sample 's2': 0 cells segmented"
    assert len(lines) == 1 + 30 + 1 and re.match(r"^\.\.\. and 12 more warnings in .*run\.json$", lines[-1])
    assert cap.err.strip() == "failed: sample 's3' failed in segment: boom"


# ------------------------------------------------------------------------------------------ zone areas
def _zone_rows(zone, fractions, source="pixels"):
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(fractions))], "zone": zone, "source": source,
                         "area_fraction": fractions})


def test_a_zone_covering_one_samples_tissue_is_a_sample_warning():
    w = _one(zone_area_checks(_zone_rows("CXCL8", [0.97, 0.5, 0.2])), "zone_covers_tissue")
    assert w["sample"] == "s0" and w["value"] == pytest.approx(0.97)
    assert re.search(r"^zone CXCL8 covers 97 % of the tissue \(> 95 %\): its threshold is at or below this "
                     r"sample's background; review it", w["message"])


def test_a_zone_covering_every_samples_tissue_is_one_cohort_warning():
    w = _one(zone_area_checks(_zone_rows("IFN", [0.99, 0.96, 1.0])), "zone_covers_tissue")
    assert w["sample"] is None and w["value"] == pytest.approx(0.96)
    assert re.search(r"^zone IFN covers more than 95 % of the tissue in all 3 samples: .*no cell is outside it",
                     w["message"])


def test_a_zone_near_empty_in_every_sample_is_one_cohort_warning():
    w = _one(zone_area_checks(_zone_rows("CCL5", [0.0, 0.0004, 0.0])), "zone_near_empty")
    assert w["sample"] is None and w["value"] == pytest.approx(0.0004)
    assert re.search(r"^zone CCL5 covers less than 0.1 % of the tissue in all 3 samples \(largest 0.04 %\): unless "
                     r"the chemokine is absent from every sample, its threshold is above the signal or its producer "
                     r"gate above the producers", w["message"])
    w = _one(zone_area_checks(_zone_rows("CCL5", [0.0])), "zone_near_empty")
    assert "in the only sample (largest 0 %)" in w["message"]


def test_a_tumor_zone_without_epithelium_in_every_sample_is_one_cohort_warning():
    """A configured tumor zone whose epithelium is empty everywhere (a panCK threshold above the epithelium): one
    record on its intraepithelial mask; its bands, all tissue, and a tumor-only biopsy stay quiet."""
    rows = pd.concat([_zone_rows("T_intraepithelial", [0.0, 0.0005], source="tumor"),
                      _zone_rows("T_distal", [1.0, 1.0], source="tumor"),
                      _zone_rows("T_margin", [0.0, 0.0], source="tumor"),
                      _zone_rows("B_intraepithelial", [1.0, 0.99], source="tumor_cells")], ignore_index=True)
    w = _one(zone_area_checks(rows), "zone_near_empty")
    assert w["sample"] is None and w["value"] == pytest.approx(0.0005)
    assert re.search(r"^tumor zone T_intraepithelial \(the epithelium\) covers less than 0.1 % of the tissue in all 2 "
                     r"samples \(largest 0.05 %\): its epithelium threshold is above the epithelium", w["message"])
    assert len(zone_area_checks(rows)) == 1


def test_zone_area_checks_stay_quiet_at_the_bounds_and_for_other_sources():
    quiet = pd.concat([
        _zone_rows("edge", [MAX_ZONE_FRACTION, MIN_ZONE_FRACTION]),  # the bounds themselves are plausible
        _zone_rows("sham_only_empty", [0.0, 0.0, 0.3]),  # a zone absent from some samples is biology
        _zone_rows("tumor_intraepithelial", [1.0, 1.0], source="tumor"),  # a biopsy can be all tumor
        _zone_rows("annotated", [0.0, 0.0], source="regions"),
        _zone_rows("no_tissue", [float("nan"), 0.5]),  # a sample without tissue has its own warning
    ], ignore_index=True)
    assert zone_area_checks(quiet) == []
    assert zone_area_checks(pd.DataFrame()) == []
    assert _one(zone_area_checks(_zone_rows("milieu", [0.0, 0.0], source="producers")), "zone_near_empty")


@pytest.mark.parametrize("value, code, where", [(-1e9, "zone_covers_tissue", "in all 4 samples: its threshold is at or below"),
                                                (1e9, "zone_near_empty", "in all 4 samples (largest 0 %)")])
def test_an_implausible_zone_is_done_but_warned_everywhere(tmp_path_factory, capsys, value, code, where):
    """A run whose CXCL8 zone threshold (absolute, as the napari review saves it) is below the background or above
    the signal: every sample finishes, and run.json, the CLI summary and the report say so."""
    import yaml

    from chemozone.synth import generate_cohort

    cohort = tmp_path_factory.mktemp("tiny")
    generate_cohort(cohort, preset="tiny", seed=3)
    cfg = yaml.safe_load((cohort / "config.yaml").read_text())
    cxcl8 = next(z for z in cfg["zones"] if z["name"] == "CXCL8")
    cxcl8["threshold"] = {"mode": "absolute", "value": value}
    (cohort / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = cohort / "run"
    assert main(["run", str(cohort), "--config", str(cohort / "bad.yaml"), "--out", str(out), "--workers", "0",
                 "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert re.match(r"^4/4 samples done", stdout)
    assert f"warning: [{code}] cohort: zone CXCL8 covers" in stdout and where in stdout
    prov = json.loads(RunLayout(out).run_json.read_text())
    assert all(s["status"] == "done" for s in prov["samples"].values())
    w = _one(prov["warnings"], code)
    assert w["sample"] is None and w["message"].startswith("zone CXCL8 covers") and where in w["message"]
    zones = pd.read_parquet(RunLayout(out).cohort_zones)  # the warning's value is the zones table's fraction
    f = zones.loc[zones["zone"] == "CXCL8", "area_fraction"]
    assert w["value"] == pytest.approx(f.min() if code == "zone_covers_tissue" else f.max())
    assert (f == 1.0).all() if code == "zone_covers_tissue" else (f == 0.0).all()
    assert not any(x["code"] in ("zone_covers_tissue", "zone_near_empty") and "CXCL8" not in x["message"]
                   for x in prov["warnings"]), prov["warnings"]
    text = RunLayout(out).report.read_text(encoding="utf-8")
    first = text[text.index("<section id='warnings'>"):text.index("<section id='summary'>")]
    assert code in first and "zone CXCL8 covers" in first


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def cohort_with_empty_sample(tmp_path_factory):
    """The tiny synthetic cohort with one image blanked (every channel 0): no tissue, no cells."""
    from chemozone.io import read_image, write_ome_tiff
    from chemozone.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, preset="tiny", seed=3)
    p = out / "images" / "P02_sham_0Gy_r1.ome.tif"
    img = read_image(p)
    blank = np.zeros(img.data.shape, img.data.dtype)
    p.unlink()
    write_ome_tiff(p, blank, channels=img.channels, pixel_size_um=img.pixel_size_um)
    return out


def test_empty_sample_is_done_but_warned_everywhere(cohort_with_empty_sample, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(cohort_with_empty_sample), "--config", str(cohort_with_empty_sample / "config.yaml"),
                 "--out", str(out), "--workers", "0", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0
    empty = "P02_sham_0Gy_r1"
    # the CLI summary: the done line counts the empty sample, the warnings follow it
    lines = stdout.splitlines()
    assert re.match(rf"^4/4 samples done \(1 with 0 cells: {empty}; \d+ warnings?, see below and run\.json\)", lines[0])
    assert f"warning: [no_cells] sample '{empty}': 0 cells segmented" in stdout
    assert re.search(rf"warning: \[low_tissue\] sample '{empty}': tissue covers 0\.0 % of the field", stdout)
    # run.json: machine-readable, per sample and for the run
    prov = json.loads(RunLayout(out).run_json.read_text())
    assert prov["samples"][empty]["status"] == "done"
    assert {w["code"] for w in prov["samples"][empty]["warnings"]} == {"no_cells", "low_tissue", "zone_threshold_warning"}
    for w in prov["warnings"]:
        assert set(w) == {"code", "sample", "message", "value"}
    # the synthetic samples themselves are plausible: no density, tissue or marker warning (rare markers like
    # CD4 at ~1 % and chemokines absent from sham samples stay quiet); a gate fallback may be reported, and the
    # blanked sham was P02's reference for the producer gates: P02's samples say their reference is missing
    # halfmax zones: the tiny cohort has fewer than 30 producers per chemokine to set the level (a true warning)
    # and every P02 zone threshold says that P02's sham has no tissue and the other shams were used
    borrowed = [w for w in prov["warnings"] if w["code"] == "zone_threshold_warning" and "no tissue pixels" in w["message"]]
    assert {w["sample"] for w in borrowed} == {s for s in prov["samples"] if s.startswith("P02_")}, borrowed
    assert all(f"patient=P02 ({empty}) have no tissue pixels; used all reference samples" in w["message"] for w in borrowed)
    others = {w["code"] for w in prov["warnings"] if w["sample"] != empty and w not in borrowed
              and not (w["code"] == "zone_threshold_warning" and "producer cells (< 30) set the level" in w["message"])}
    assert others <= {"gate_warning", "missing_reference"}, prov["warnings"]
    missing = [w for w in prov["warnings"] if w["code"] == "missing_reference"]
    assert all("patient=P02" in w["message"] and w["sample"].startswith("P02_") for w in missing), missing
    # the report: a Warnings section before everything else, and the summary marks the empty sample
    text = RunLayout(out).report.read_text(encoding="utf-8")
    sections = re.findall(r"<section id='([a-z]+)'>", text)
    assert sections[0] == "warnings"
    first = text[text.index("<section id='warnings'>"):text.index("<section id='summary'>")]
    assert "1 sample with 0 cells" in first and "no_cells" in first and empty in first
    assert "done, 0 cells: 1" in text
    assert "could not be drawn" not in text


def test_resume_records_the_same_warnings(cohort_with_empty_sample, tmp_path):
    from chemozone.run import run_batch

    cfg = cohort_with_empty_sample / "config.yaml"
    first = run_batch(cohort_with_empty_sample, cfg, tmp_path / "run", progress=False, in_process=True)
    again = run_batch(cohort_with_empty_sample, cfg, tmp_path / "run", progress=False, in_process=True, resume=True)
    prov = json.loads(RunLayout(tmp_path / "run").run_json.read_text())
    assert all(s.get("resumed") for s in prov["samples"].values())
    assert again.warnings == first.warnings == prov["warnings"]
    assert any(w["code"] == "no_cells" for w in again.warnings)
    shutil.rmtree(tmp_path / "run")
