"""``benchmarks/eval_stats.py`` reads the stress generator's truth as it reads the synth generator's (issue 15).

The checks table on the stress ``stats`` preset (54 samples, minutes of CPU) is made by the benchmark; this
checks on two tiny cohorts that the stress-truth reader gives the tables the checks need, with the same
columns as the synth reader, the realised truth the generator recorded, and the stricter receptor− counts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chemozone import stats, stress, synth


@pytest.fixture(scope="module")
def ev():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_stats.py"
    spec = importlib.util.spec_from_file_location("eval_stats", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_stats"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("evstats")
    syn = synth.generate_cohort(root / "synth", preset="tiny", seed=0)
    st = stress.generate_cohort(root / "stress", preset="stats", n_patients=2, size_px=256, seed=0,
                                design=[("sham", 0.0), ("photon", 10.0), ("carbon", 2.0)])
    return syn / "truth" / "cohort.json", st / "truth" / "cohort.json"


def _generic(columns, modules):
    """Column names with each chemokine / receptor name replaced by a placeholder."""
    out = set()
    for c in columns:
        for m in sorted(modules, key=len, reverse=True):
            c = c.replace(m, "{m}")
        out.add(c)
    return out


def test_stress_truth_maps_to_the_synth_readers_columns(ev, cohorts):
    syn_json, st_json = cohorts
    a, b = ev.truth_run(syn_json), ev.truth_run(st_json)
    syn_mods = ev.truth_parameters(json.loads(syn_json.read_text()))["modules"]
    st_mods = ev.truth_parameters(json.loads(st_json.read_text()))["modules"]
    assert set(a) == set(b)
    for key in ("samples", "zones", "infiltration", "cells", "zone_overlap"):
        assert _generic(a[key].columns, syn_mods) == _generic(b[key].columns, st_mods), key
    assert b["run"]["config"]["spatial"]["cognate_pairs"] == [
        {"zone": "CXCL10", "receptor": "CXCR3", "cell_types": ["NK", "CD8 T"]},
        {"zone": "CCL5", "receptor": "CCR5", "cell_types": ["NK", "CD8 T"]}]
    # the phenotype labels carry every receptor the truth cells have, as the pipeline writes them
    assert {"CD8 T CXCR3+ CCR5+", "CD8 T CXCR3+", "CD8 T"} <= set(b["infiltration"]["population"])


def test_stress_truth_parameters_and_realised_truth(ev, cohorts):
    _, st_json = cohorts
    tj = json.loads(st_json.read_text())
    assert ev.is_stress_truth(tj)
    par = ev.truth_parameters(tj)
    assert par["effectiveness"] == {"sham": 1.0, "photon": 1.0, "carbon": 2.5}
    assert par["modules"]["CXCL10"]["receptor"] == "CXCR3" and par["modules"]["CCL5"]["receptor"] == "CCR5"
    assert par["modules"]["CXCL10"]["conservation"]["carbon"] == 0.5
    assert par["modules"]["CCL5"]["conservation"]["carbon"] == 1.0
    assert par["modules"]["CXCL10"]["ed50_gy"] == 4.0
    run = ev.truth_run(st_json)
    info = tj["samples"]
    # zone fractions from the masks = the generator's record; carbon 2 Gy acts as photon 5 Gy
    z = run["zones"]
    for _, r in z.iterrows():
        assert r["area_fraction"] == pytest.approx(info[r["sample_id"]]["zone_fraction"][r["zone"]], abs=1e-4)
    assert set(run["samples"].loc[run["samples"]["radiation"] == "carbon", "effective_dose_gy"]) == {5.0}
    pf = stats.metric_table(run, "producer_fraction", markers=["CXCL10", "CCL5"]).set_index("sample_id")
    for sid, s in info.items():
        for m in ("CXCL10", "CCL5"):
            assert pf.at[sid, f"producer_fraction_{m}"] == pytest.approx(s["producer_fraction"][m], abs=1e-5)
        assert pf.at[sid, "n_tumor_cells"] == s["n_tumor"]


def test_receptor_negative_for_every_receptor_counts_by_hand(ev, cohorts):
    _, st_json = cohorts
    run = ev.truth_run(st_json)
    pairs = run["run"]["config"]["spatial"]["cognate_pairs"]
    every = ev._every_negative_counts(run, pairs, adjusted=False)
    cognate = stats.receptor_count_table(run, pairs=pairs, pool=True)
    cells = pd.concat([pd.read_parquet(st_json.parent / sid / "cells.parquet") for sid in run["samples"]["sample_id"]])
    key = ["sample_id", "zone", "cell_type", "status", "region"]
    ev_i, co_i = every.set_index(key)["n_cells"], cognate.set_index(key)["n_cells"]
    checked = 0
    for sid in run["samples"]["sample_id"]:
        c = cells[cells["sample_id"] == sid]
        for zone, rec, other in (("CXCL10", "CXCR3", "CCR5"), ("CCL5", "CCR5", "CXCR3")):
            for ct in ("NK", "CD8 T"):
                inside = c[(c["cell_type"] == ct) & c[f"in_{zone}"]]
                none = int((~inside[f"{rec}_pos"] & ~inside[f"{other}_pos"]).sum())
                assert ev_i[(sid, zone, ct, "neg", "inside")] == none
                assert co_i[(sid, zone, ct, "neg", "inside")] == int((~inside[f"{rec}_pos"]).sum())
                assert ev_i[(sid, zone, ct, "pos", "inside")] == int((inside[f"{rec}_pos"] & ~inside[f"{other}_pos"]).sum())
                checked += 1
    assert checked == 4 * len(run["samples"])
    # the areas are those of the full table (no region lost by removing populations)
    m = every.merge(cognate, on=key, suffixes=("", "_c"))
    assert len(m) == len(cognate) and np.allclose(m["area_mm2"], m["area_mm2_c"])
    # co-localised zones recruit cells carrying the other receptor: the cognate-only "neg" holds more cells
    assert (co_i - ev_i.reindex(co_i.index)).min() >= 0
    assert (co_i - ev_i.reindex(co_i.index)).xs("neg", level="status").sum() > 0


def test_complete_effectiveness_fills_the_package_default_not_the_generators(ev):
    s = pd.DataFrame({"sample_id": ["a", "b", "c"], "radiation": ["sham", "photon", "carbon"],
                      "dose_gy": [0.0, 2.0, 2.0]})
    run = {"samples": stats.add_effective_dose(s, {"photon": 1.0}, strict=False), "effectiveness": {"photon": 1.0},
           "zones": s.assign(zone="CXCL10")}
    assert np.isnan(run["samples"]["effective_dose_gy"].iloc[2])
    assert ev.complete_effectiveness(run) == ["carbon 2.5"]
    assert run["effectiveness"] == {"photon": 1.0, "carbon": 2.5}
    assert run["samples"]["effective_dose_gy"].tolist() == [0.0, 2.0, 5.0]
    assert run["zones"]["effective_dose_gy"].tolist() == [0.0, 2.0, 5.0]
    assert ev.complete_effectiveness(run) == []  # nothing missing any more


def test_tumor_compartment_in_the_truth_overlap_and_merged_away_exactly(ev, cohorts):
    """The truth's overlap table carries the tumor compartment; merging it away gives, region by region, the cells
    and areas counted without it (by hand from the truth cells and masks), so rows 4a/4b are what they were before
    the compartment was added and 4e/4f are the only ones that see it."""
    import tifffile

    for tj in cohorts:
        run = ev.truth_run(tj)
        pairs = run["run"]["config"]["spatial"]["cognate_pairs"]
        assert ev._compartments(run, pairs) == ["tumor"]
        merged = ev._without_overlap_flags(run, ["tumor"])["zone_overlap"]
        assert "in_tumor" not in merged and ev._compartments({"zone_overlap": merged}, pairs) == []
        zones = [p["zone"] for p in pairs]
        sid = run["samples"]["sample_id"].iloc[-1]
        d = tj.parent / sid
        cells = pd.read_parquet(d / "cells.parquet")
        tis = tifffile.imread(d / "tissue.tif") > 0
        px = ev.truth_parameters(json.loads(tj.read_text()))["pixel_size_um"]
        m = merged[merged["sample_id"] == sid]
        for flags, g in m.groupby([f"in_{z}" for z in zones]):
            inside = np.ones(len(cells), bool)
            area = tis.copy()
            for z, f in zip(zones, flags):
                inside &= cells[f"in_{z}"].to_numpy(bool) == f
                area &= (tifffile.imread(d / f"zone_{z}.tif") > 0) == f
            assert g["n_cells"].sum() == inside.sum()
            assert g["area_mm2"].iloc[0] == pytest.approx(area.sum() * px * px / 1e6)
            assert g["area_mm2"].nunique() == 1
