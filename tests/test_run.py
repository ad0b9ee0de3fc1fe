"""End-to-end batch runs on the tiny synthetic preset (through the CLI and the library)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chemozone.cli import main
from chemozone.layout import RunLayout

EXE = os.path.join(os.path.dirname(sys.executable), "chemozone")


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from chemozone.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, preset="tiny", seed=3)
    return out


@pytest.fixture(scope="module")
def tiny_run(tiny_cohort, tmp_path_factory):
    """One real run through the CLI with a local Dask cluster of one worker."""
    out = tmp_path_factory.mktemp("run")
    code = main(["run", str(tiny_cohort), "--config", str(tiny_cohort / "config.yaml"), "--out", str(out),
                 "--workers", "1", "--quiet"])
    assert code == 0
    return out


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    lay = RunLayout(out)
    return {n: pd.read_parquet(p) for n, p in [("cells", lay.cohort_cells), ("infiltration", lay.cohort_infiltration),
                                               ("zones", lay.cohort_zones), ("gates", lay.gates)]}


def test_run_folder_has_design_files_and_columns(tiny_run, tiny_cohort):
    lay = RunLayout(tiny_run)
    samples = pd.read_csv(tiny_cohort / "samples.csv")
    for p in [lay.run_json, lay.run_log, lay.cohort_cells, lay.cohort_infiltration, lay.cohort_zones, lay.gates,
              lay.cohort_samples, lay.report]:
        assert p.is_file(), p
    # the CLI's run wrote its report on the run's Dask worker (heavy sections as tasks): every section drawn
    text = lay.report.read_text(encoding="utf-8")
    assert "id='infiltration'" in text and "could not be drawn" not in text
    prov = json.loads(lay.run_json.read_text())
    assert prov["status"] == "done"
    assert prov["segmentation"]["method"] == "watershed" and "nuclei_defaults" in prov["segmentation"]
    assert prov["versions"]["chemozone"] and prov["config"]["segmentation"]["method"] == "watershed"
    assert set(prov["samples"]) == set(samples["sample_id"])
    for sid, info in prov["samples"].items():
        assert info["status"] == "done"
        assert info["step_a"]["timings_s"]["segment"] >= 0 and info["step_a"]["peak_rss_mb"] > 0
        assert lay.cells(sid).is_file() and lay.zones(sid).is_file() and lay.infiltration(sid).is_file()
        assert lay.qc(sid).is_file()
        from chemozone.io import list_labels_zarr, read_labels_zarr

        labels = list_labels_zarr(lay.masks(sid))
        assert {"nuclei", "cells", "tissue"} <= set(labels)
        assert any(n.startswith("zone_") for n in labels)
        assert read_labels_zarr(lay.masks(sid), "cells").dtype == np.uint32
    assert prov["inputs"] and all(len(v["sha256"]) == 64 for v in prov["inputs"].values())
    # plausibility: recorded (run and per sample), machine-readable; the synthetic cohort is plausible (no empty
    # sample, tissue, density or marker warning; a gate fallback may be reported), and step B counts positives
    assert isinstance(prov["warnings"], list)
    for w in prov["warnings"]:
        assert set(w) == {"code", "sample", "message", "value"}, w
        # halfmax zones of this 4-sample tiny cohort rest on ~20 gated producers: a true "uncertain" warning
        assert w["code"] == "gate_warning" or (w["code"] == "zone_threshold_warning"
                                               and "producer cells (< 30) set the level" in w["message"]), w
    for sid, info in prov["samples"].items():
        assert info["warnings"] == [w for w in prov["warnings"] if w["sample"] == sid]
        counts = {c["marker"]: c for c in info["step_b"]["positive_counts"]}
        assert set(counts) == set(prov["config"]["phenotypes"]["markers"])
        assert all(c["n_cells"] == info["step_b"]["n_cells"] for c in counts.values())
        assert info["step_a"]["pixel_size_um"] == 0.5 and prov["inputs"][sid]["image_info"]["pixel_size_source"] == "file"
    cells = pd.read_parquet(lay.cohort_cells)
    for col in ["sample_id", "cell_id", "x_um", "y_um", "area_um2", "nucleus_area_um2", "DAPI_nucleus",
                "CD3_cell", "p21_nucleus", "CD3_pos", "cell_type", "phenotype", "dist_tissue_edge_um",
                "patient", "radiation", "dose_gy"]:
        assert col in cells.columns, col
    assert any(c.startswith("in_") for c in cells.columns)
    assert any(c.startswith("dist_") and c.endswith("_um") for c in cells.columns)
    infil = pd.read_parquet(lay.cohort_infiltration)
    for col in ["sample_id", "population", "zone", "region", "n_cells", "area_mm2", "density_per_mm2", "dose_gy"]:
        assert col in infil.columns, col
    assert {"inside", "outside"} <= set(infil["region"])
    zones = pd.read_parquet(lay.cohort_zones)
    for col in ["sample_id", "zone", "source", "threshold_used", "area_mm2", "tissue_area_mm2"]:
        assert col in zones.columns, col
    # zone combinations: their margins are the infiltration table's inside counts and areas, exactly
    ov = pd.read_parquet(lay.cohort_zone_overlap)
    pair_zones = [p["zone"] for p in prov["config"]["spatial"]["cognate_pairs"]]
    assert pair_zones and [c[3:] for c in ov.columns if c.startswith("in_")] == list(dict.fromkeys(pair_zones))
    assert "dose_gy" in ov.columns
    for z in dict.fromkeys(pair_zones):
        a = ov[ov[f"in_{z}"] & (ov["population_type"] == "cell_type")].groupby(["sample_id", "population"])[
            ["n_cells", "area_mm2"]].sum()
        b = infil[(infil["zone"] == z) & (infil["region"] == "inside") & (infil["population_type"] == "cell_type")]
        b = b.set_index(["sample_id", "population"])
        assert (a["n_cells"].reindex(b.index, fill_value=0) == b["n_cells"]).all()
        np.testing.assert_allclose(a["area_mm2"].reindex(b.index, fill_value=0), b["area_mm2"])


def test_same_seed_same_tables(tiny_run, tiny_cohort, tmp_path):
    """The same cohort again, in this process (``--workers 0``, no Dask cluster): the same tables, bit for bit."""
    assert main(["run", str(tiny_cohort), "--config", str(tiny_cohort / "config.yaml"), "--out", str(tmp_path / "again"),
                 "--workers", "0", "--quiet", "--no-report"]) == 0
    assert json.loads((tmp_path / "again" / "run.json").read_text())["status"] == "done"
    a, b = _tables(tiny_run), _tables(tmp_path / "again")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)


def test_negative_workers_are_refused(tiny_cohort, tmp_path, capsys):
    from chemozone.errors import ConfigError
    from chemozone.run import run_batch

    with pytest.raises(SystemExit):
        main(["run", str(tiny_cohort), "--config", str(tiny_cohort / "config.yaml"), "--out", str(tmp_path / "o"),
              "--workers", "-1"])
    assert "--workers must be a whole number >= 0 (0: no Dask cluster), got '-1'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"workers must be >= 0 \(0: no Dask cluster\), got -2"):
        run_batch(tiny_cohort, tiny_cohort / "config.yaml", tmp_path / "o", workers=-2, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["tiles", "truncated"])
def test_corrupt_image_skip_exits_3_and_records_failure(tiny_cohort, tmp_path, damage):
    import shutil

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    samples = pd.read_csv(cohort / "samples.csv")
    victim = cohort / samples["image"].iloc[1]
    data = bytearray(victim.read_bytes())
    if damage == "tiles":  # header and IFDs intact (passes validation), compressed pixel data garbage
        import tifffile

        with tifffile.TiffFile(victim) as tif:
            page = tif.pages[0]
            off, n = page.dataoffsets[0], page.databytecounts[0]
        data[off:off + n] = b"\x55" * n
        victim.write_bytes(bytes(data))
    else:  # the file ends early: rejected by validation, skipped as a failed sample
        victim.write_bytes(bytes(data[:200]))
    out = tmp_path / "run"
    workers = "1" if damage == "tiles" else "0"  # the unreadable tile fails on a Dask worker; both paths are checked
    res = subprocess.run([EXE, "run", str(cohort), "--config", str(cohort / "config.yaml"), "--out", str(out),
                          "--workers", workers, "--on-error", "skip", "--quiet", "--no-report"], capture_output=True,
                         text=True)
    assert res.returncode == 3, res.stderr
    prov = json.loads((out / "run.json").read_text())
    bad = samples["sample_id"].iloc[1]
    assert prov["samples"][bad]["status"] == "failed" and prov["samples"][bad]["error"]
    assert prov["status"] == "partial" and bad in prov["failed"]
    assert bad in res.stderr
    others = [s for s in samples["sample_id"] if s != bad]
    assert all(prov["samples"][s]["status"] == "done" for s in others)
    cells = pd.read_parquet(out / "cells.parquet")
    assert set(cells["sample_id"]) == set(others)
    # default --on-error raise: exit 1 with a one-line message naming the sample, no traceback
    res = subprocess.run([EXE, "run", str(cohort), "--config", str(cohort / "config.yaml"), "--out", str(tmp_path / "r2"),
                          "--workers", "0", "--quiet", "--no-report"], capture_output=True, text=True)
    assert res.returncode == 1 and bad in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0


def test_refuses_to_start_on_a_missing_channel(tiny_cohort, tmp_path, capsys):
    # every mention (marker, zone, cognate pair): a halfmax zone must name a gated marker, so renaming only the
    # marker would stop at the config check before the channel check this test is about
    cfg = (tiny_cohort / "config.yaml").read_text().replace("CXCL10", "CXCL99")
    (tmp_path / "c.yaml").write_text(cfg)
    code = main(["run", str(tiny_cohort), "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 1
    assert "refusing to start" in capsys.readouterr().err
    assert not (tmp_path / "o" / "run.json").exists()


def _no_reference_config(tiny_cohort, tmp_path, where: str) -> Path:
    """The tiny cohort's config with a reference gate (CD3) or zone threshold (CXCL8) whose query matches no
    sample (this lab calls its shams 'control')."""
    import yaml

    data = yaml.safe_load((tiny_cohort / "config.yaml").read_text())
    if where == "gate":
        data["phenotypes"]["markers"]["CD3"]["gate"] = {"method": "reference", "reference": {"radiation": "control"}}
    else:
        data["zones"][0]["threshold"] = {"mode": "reference", "reference": {"radiation": "control"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path / "c.yaml"


def _assert_refused_before_step_a(out: Path) -> None:
    """Nothing was segmented: no sample folder, no measurements (a whole section is not segmented for an hour before
    a config error that the sample sheet alone shows)."""
    assert not out.exists() or not any(out.rglob("measurements.parquet"))


def test_no_reference_sample_at_all_refuses_the_run_before_step_a(tiny_cohort, tmp_path, capsys):
    cfg = _no_reference_config(tiny_cohort, tmp_path, "gate")
    out = tmp_path / "o"
    code = main(["run", str(tiny_cohort), "--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"])
    assert code == 1
    msg = "phenotypes.markers.CD3.gate.reference: no sample matches {'radiation': 'control'} among 4 samples"
    err = capsys.readouterr().err
    assert f"refusing to start: {msg}" in err and "Traceback" not in err and err.count("\n") == 1
    _assert_refused_before_step_a(out)
    assert main(["validate", str(cfg), str(tiny_cohort)]) == 1  # chemozone validate says the same
    assert msg in capsys.readouterr().out


def test_no_reference_sample_of_a_zone_threshold_refuses_the_run_before_step_a(tiny_cohort, tmp_path):
    from chemozone.errors import RunError
    from chemozone.run import run_batch

    cfg = _no_reference_config(tiny_cohort, tmp_path, "zone")
    msg = "zones[0].threshold.reference: no sample matches {'radiation': 'control'} among 4 samples"
    with pytest.raises(RunError, match=re.escape(f"refusing to start: {msg}")):
        run_batch(tiny_cohort, cfg, tmp_path / "o", in_process=True, progress=False)
    _assert_refused_before_step_a(tmp_path / "o")


def test_a_sheet_without_doses_names_the_empty_column_before_step_a(tiny_cohort, tmp_path):
    """The README's configs take their reference samples by dose_gy 0; a sheet without doses says so at once."""
    from chemozone.errors import RunError
    from chemozone.run import run_batch

    sheet = pd.read_csv(tiny_cohort / "samples.csv").drop(columns=["dose_gy", "radiation"])
    sheet["image"] = [str(tiny_cohort / i) for i in sheet["image"]]
    sheet.to_csv(tmp_path / "samples.csv", index=False)
    with pytest.raises(RunError, match=r"refusing to start: phenotypes\.markers\.\w+\.gate\.reference: no sample "
                       r"matches \{'dose_gy': 0\} among 4 samples \(the sample sheet gives no 'dose_gy': fill the "
                       r"column, e\.g\. dose_gy 0 for the sham samples, or query a column it fills\)"):
        run_batch(tmp_path / "samples.csv", tiny_cohort / "config.yaml", tmp_path / "o", in_process=True,
                  progress=False)
    _assert_refused_before_step_a(tmp_path / "o")


def test_reference_samples_lost_in_the_run_stop_the_cohort_step_and_keep_step_a(tiny_cohort, tmp_path):
    """Under --on-error skip, both sham images are truncated (their headers read, their pixels do not): they fail,
    the irradiated samples finish step A, and the cohort step, left without a dose-0 reference, stops the run;
    run.json says where and why, and step A's outputs stay as they are."""
    import shutil

    from chemozone.errors import ConfigError
    from chemozone.run import run_batch

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    for sham in cohort.glob("images/*_sham_*"):
        with sham.open("r+b") as f:
            f.truncate(sham.stat().st_size // 2)
    msg = "phenotypes.markers.p21.gate.reference: no sample matches {'dose_gy': 0} among 2 samples"
    with pytest.raises(ConfigError, match=re.escape(msg)):
        run_batch(cohort, cohort / "config.yaml", tmp_path / "o", in_process=True, progress=False, on_error="skip")
    lay = RunLayout(tmp_path / "o")
    rec = json.loads(lay.run_json.read_text())
    assert rec["status"] == "failed" and rec["failed_stage"] == "cohort step"
    assert msg in rec["error"] and "\n" not in rec["error"] and rec["finished"]
    statuses = {sid: s["status"] for sid, s in rec["samples"].items()}
    assert statuses == {"P01_sham_0Gy_r1": "failed", "P02_sham_0Gy_r1": "failed",
                        "P01_photon_10Gy_r1": "step_a_done", "P02_photon_10Gy_r1": "step_a_done"}
    for sid in ("P01_photon_10Gy_r1", "P02_photon_10Gy_r1"):  # step A's outputs are intact
        srec = rec["samples"][sid]
        assert srec["step_a"]["n_cells"] > 0 and len(pd.read_parquet(lay.measurements(sid))) == srec["step_a"]["n_cells"]
        assert lay.masks(sid).is_dir() and lay.step_a_stamp(sid).is_file()


def test_run_json_records_um_values_without_float_noise(tmp_path):
    """A 0.65 µm/px image on the default 2 µm grid: 3 image pixels per grid pixel, 3 × 0.65 = 1.9500000000000002
    in float arithmetic. run.json records 1.95; the grid the run computes with is left as it is."""
    from chemozone._run_record import Ledger, tidy_um
    from chemozone.grid import grid_pixel_um

    grid_um = grid_pixel_um(0.65, 2.0)
    assert grid_um == 3 * 0.65 and repr(grid_um) == "1.9500000000000002"  # the computed grid is unchanged
    prov = {"samples": {"s1": {"status": "pending"}}, "status": "running"}
    ledger = Ledger(prov, RunLayout(tmp_path), "raise")
    ledger.record("s1", status="step_a_done", step_a={"grid_um": grid_um, "pixel_size_um": 0.65, "n_cells": 7,
                                                      "nucleus_scale": {"diameter_um": 0.1 + 0.2, "n_blobs": 3}})
    text = (tmp_path / "run.json").read_text()
    assert "1.9500000000000002" not in text and "0.30000000000000004" not in text
    step_a = json.loads(text)["samples"]["s1"]["step_a"]
    assert step_a == {"grid_um": 1.95, "pixel_size_um": 0.65, "n_cells": 7,
                      "nucleus_scale": {"diameter_um": 0.3, "n_blobs": 3}}
    assert prov["samples"]["s1"]["step_a"]["grid_um"] == grid_um  # only the record is rounded
    # other floats are recorded as they are; 12 significant digits keep every real digit of a µm value
    assert tidy_um({"fraction": 0.1 + 0.2, "x_um": 0.123456789012345}) == {"fraction": 0.1 + 0.2,
                                                                            "x_um": 0.123456789012}


@pytest.mark.slow
def test_resume_after_sigkill_equals_clean_run(tiny_run, tiny_cohort, tmp_path):
    out = tmp_path / "killed"
    cmd = [EXE, "run", str(tiny_cohort), "--config", str(tiny_cohort / "config.yaml"), "--out", str(out),
           "--workers", "1", "--quiet", "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    # kill as soon as the first sample finished step A (mid-run)
    while time.time() < deadline and proc.poll() is None:
        if list(out.glob("samples/*/step_a.json")):
            break
        time.sleep(0.05)
    finished = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if finished or json.loads((out / "run.json").read_text())["status"] == "done":
        pytest.skip("the run finished before it could be killed (machine too fast for this tiny cohort)")
    assert not (out / "cells.parquet").exists()
    res = subprocess.run(cmd[:-4] + ["--workers", "0", "--quiet", "--no-report", "--resume"], capture_output=True,
                         text=True)  # resumed in one process: what is resumed does not depend on the cluster
    assert res.returncode == 0, res.stderr
    prov = json.loads((out / "run.json").read_text())
    assert any(s.get("resumed") for s in prov["samples"].values())
    a, b = _tables(tiny_run), _tables(out)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)


def test_reviewed_gates_zones_and_phenotypes_replay_in_a_run(tiny_cohort, tmp_path):
    """What a user decides in napari (gates file, zone threshold, hand-corrected phenotype) is replayed by a run."""
    import shutil

    import yaml

    from chemozone.run import run_batch
    from chemozone_napari._review import save_reviewed, update_gates_file, update_zone_config

    cfg_path = tmp_path / "config.yaml"
    shutil.copy(tiny_cohort / "config.yaml", cfg_path)
    out = tmp_path / "run"
    assert run_batch(tiny_cohort, cfg_path, out, in_process=True, progress=False).exit_code == 0
    cells = pd.read_parquet(out / "cells.parquet")
    sid = cells["sample_id"].iloc[0]
    one = cells[cells["sample_id"] == sid]
    compartment = yaml.safe_load(cfg_path.read_text())["phenotypes"]["markers"]["CD3"]["compartment"]
    col = f"CD3_{compartment}"
    reviewed_gate = float(np.median(one[col]))
    update_gates_file(tmp_path / "gates.yaml", "CD3", reviewed_gate, sample_id=sid)
    update_zone_config(cfg_path, "CXCL8", threshold=123.0, smooth_um=8.0)
    data = yaml.safe_load(cfg_path.read_text())
    data["phenotypes"]["gates_file"] = "gates.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    cell_id = int(one["cell_id"].iloc[0])
    save_reviewed(out / "samples" / sid, [cell_id], ["NK CXCR2+"])

    assert run_batch(tiny_cohort, cfg_path, out, in_process=True, progress=False, resume=True).exit_code == 0
    again = pd.read_parquet(out / "cells.parquet")
    one2 = again[again["sample_id"] == sid]
    np.testing.assert_array_equal(one2["CD3_pos"].to_numpy(), (one2[col] > reviewed_gate).to_numpy())
    gates = pd.read_parquet(out / "gates.parquet")
    row = gates[(gates["sample_id"] == sid) & (gates["marker"] == "CD3")].iloc[0]
    assert row["threshold_raw"] == pytest.approx(reviewed_gate)
    zones = pd.read_parquet(out / "zones.parquet")
    assert (zones.loc[zones["zone"] == "CXCL8", "threshold_used"] == 123.0).all()
    rev = one2.set_index("cell_id")["phenotype_reviewed"]
    assert rev.loc[cell_id] == "NK CXCR2+" and rev.drop(cell_id).isna().all()


def test_documented_example_config_runs_on_the_tiny_cohort(tiny_cohort, tmp_path):
    """configs/example.yaml (reference-gated chemokines, producer zone, tumor compartments) runs end to end."""
    from chemozone.run import run_batch

    example = Path(__file__).resolve().parents[1] / "configs" / "example.yaml"
    res = run_batch(tiny_cohort, example, tmp_path / "run", in_process=True, progress=False)
    assert res.exit_code == 0
    zones = pd.read_parquet(tmp_path / "run" / "zones.parquet")
    assert {"CXCL8", "CXCL8_producers", "tumor_intraepithelial", "tumor_margin"} <= set(zones["zone"])
    # reference (sham) thresholds: sham samples have (almost) no chemokine zone, irradiated ones do
    cx = zones[zones["zone"] == "CXCL8"].set_index("dose_gy")["area_fraction"]
    assert cx.loc[0.0].max() < 0.05 < cx.loc[10.0].min()


def test_config_names_reach_the_tables_through_panel_aliases(tiny_cohort, tmp_path):
    """A config that names a marker by its own spelling and maps the file's spelling with panel.aliases (as the
    README says) gets per-cell columns under the config's name, so gates and rules find them."""
    import yaml

    from chemozone.run import run_batch

    data = yaml.safe_load((tiny_cohort / "config.yaml").read_text())
    data["panel"]["aliases"] = {"CD8a": ["CD8"]}  # the images spell it CD8; this lab writes CD8a
    ph = data["phenotypes"]
    ph["markers"]["CD8a"] = ph["markers"].pop("CD8")
    for rule in ph["rules"]:
        for key in ("pos", "neg", "any"):
            rule[key] = ["CD8a" if m == "CD8" else m for m in rule.get(key, [])]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    res = run_batch(tiny_cohort, tmp_path / "c.yaml", tmp_path / "run", in_process=True, progress=False)
    assert res.exit_code == 0
    cells = pd.read_parquet(tmp_path / "run" / "cells.parquet")
    assert {"CD8a_cell", "CD8a_pos"} <= set(cells.columns) and not any(c.startswith("CD8_") for c in cells.columns)
    assert (cells["cell_type"] == "CD8 T").sum() > 0


def _count_calls(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call; returns the record."""
    calls: list = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_zone_pass_reads_no_pixels_and_step_b_reuses_its_signals(tiny_cohort, tmp_path, monkeypatch):
    """Step A's tissue pass keeps the zone channels' grid means (``.grid_means.zarr``, one array per zone channel), so
    the zone pass reads no pixel; step B thresholds the zone signals the zone pass computed (each pixel zone's signal
    once per sample) and removes them. The tables equal a run that reads the image and recomputes every signal; a
    sample that fails in step B does not leave its signals behind either."""
    import zarr

    from chemozone import grid_means, zones
    from chemozone import run as run_mod
    from chemozone.config import load_config
    from chemozone.layout import SampleLayout

    signals = _count_calls(monkeypatch, zones, "zone_signal")
    pixel_reads = _count_calls(monkeypatch, zones, "downsample_to_grid")
    cfg = load_config(tiny_cohort / "config.yaml")
    out = tmp_path / "cached"
    assert run_batch_quiet(tiny_cohort, cfg, out) == 0
    n_pixel_zones = sum(z.source in ("pixels", "tumor") for z in cfg.zones)
    n_samples = len(pd.read_csv(tiny_cohort / "samples.csv"))
    assert n_pixel_zones and len(signals) == n_pixel_zones * n_samples
    assert pixel_reads == []
    zone_channels = {c for z in cfg.zones if z.source in ("pixels", "tumor") for c in z.channels}
    for sdir in RunLayout(out).samples_dir.iterdir():
        grp = zarr.open_group(str(SampleLayout(sdir).grid_means), mode="r")
        assert {grp[k].attrs["channel"] for k in grp.array_keys()} == zone_channels
    assert not list(out.glob("samples/*/.zone_signals.zarr"))

    signals.clear()
    monkeypatch.setattr(run_mod, "_cached_signals", lambda *a, **k: {})
    monkeypatch.setattr(grid_means, "read_grid_means", lambda *a, **k: {})
    fresh = tmp_path / "recomputed"
    assert run_batch_quiet(tiny_cohort, cfg, fresh) == 0
    assert len(signals) == 2 * n_pixel_zones * n_samples and len(pixel_reads) > 0
    for name in ("cells", "zones", "infiltration"):
        pd.testing.assert_frame_equal(_tables(out)[name], _tables(fresh)[name])

    from chemozone import spatial
    from chemozone.run import run_batch

    monkeypatch.setattr(spatial, "annotate_and_infiltrate", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    failed = run_batch(tiny_cohort, cfg, tmp_path / "failed", in_process=True, progress=False, on_error="skip")
    assert failed.exit_code == 3 and all(s == "failed" for s in failed.statuses.values())
    assert not list((tmp_path / "failed").glob("samples/*/.zone_signals.zarr"))


def test_a_cached_zone_signal_of_other_settings_is_ignored(tmp_path):
    from chemozone.config import ZoneConfig
    from chemozone.run import _cache_signal, _cached_signals

    z = ZoneConfig(name="C", channels=["C"], smooth_um=4.0)
    sig = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    _cache_signal(tmp_path / "c.zarr", z, sig, grid_um=2.0)
    got = _cached_signals(tmp_path / "c.zarr", [z], (3, 4), grid_um=2.0)
    assert np.array_equal(np.asarray(got["C"]), sig)
    assert _cached_signals(tmp_path / "c.zarr", [z.model_copy(update={"smooth_um": 5.0})], (3, 4), grid_um=2.0) == {}
    assert _cached_signals(tmp_path / "c.zarr", [z], (3, 4), grid_um=1.0) == {}
    assert _cached_signals(tmp_path / "c.zarr", [z], (4, 4), grid_um=2.0) == {}
    assert _cached_signals(tmp_path / "missing.zarr", [z], (3, 4), grid_um=2.0) == {}


def run_batch_quiet(cohort, cfg, out) -> int:
    from chemozone.run import run_batch

    return run_batch(cohort, cfg, out, in_process=True, progress=False).exit_code


def _kill_own_worker(row):
    os._exit(1)  # as the nanny does to a worker over its memory limit


def test_a_sample_whose_worker_dies_gets_a_memory_hint():
    """A worker killed mid-task (by the nanny, for memory) used to surface as 'FutureCancelledError: ...
    already forgotten'; the error now says what most likely happened and what to change."""
    import dask
    import distributed  # noqa: F401 - its config defaults must exist before the set below, or leaving the set drops them
    from rich.console import Console

    from chemozone.scheduler import StageError, dask_client, map_samples

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), dask_client(
            address=None, n_workers=1, threads_per_worker=1, memory_limit="1.5GB", console=Console(quiet=True)) as c:
        [(row, out)] = list(map_samples(c, _kill_own_worker, [{"sample_id": "s1"}], (), "step B"))
    assert isinstance(out, StageError) and out.stage == "step B (worker)"
    assert "its Dask worker died, most often by going over its memory limit of 1.5 GB" in out.message
    assert "--memory-limit" in out.message


def test_spare_threads_share_the_workers_threads_among_the_tasks():
    from distributed import Client, LocalCluster

    from chemozone.scheduler import spare_threads

    assert spare_threads(None, 1) == 1
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        assert [spare_threads(c, n) for n in (0, 1, 2, 3, 9)] == [1, 2, 1, 1, 1]
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        assert [spare_threads(c, n) for n in (1, 2, 3)] == [3, 1, 1]
    # more workers than distributed's scheduler_info() lists by default (5): every one counts
    with LocalCluster(n_workers=7, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        assert [spare_threads(c, n) for n in (1, 2, 3, 7)] == [7, 3, 2, 1]


def test_samples_fewer_than_the_worker_threads_compute_their_zones_on_the_spare_threads(tiny_cohort, tmp_path):
    """A whole section is often alone in step B: the idle worker threads then compute its zones too (run.json
    records how many), and the zone pass splits each sample's zones into one task per spare thread; the tables,
    the zone thresholds and the signal at the cells equal a one-thread run's (the same samples, in process)."""
    from distributed import LocalCluster

    from chemozone.run import run_batch

    rows = pd.read_csv(tiny_cohort / "samples.csv")
    two = rows[rows["patient"] == rows["patient"].iloc[0]].sort_values("dose_gy").iloc[[0, -1]]
    two = two.assign(image=[str(tiny_cohort / p) for p in two["image"]])
    sheet = tmp_path / "two.csv"
    two.to_csv(sheet, index=False)
    cfg = tiny_cohort / "config.yaml"
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False, dashboard_address=":0") as cluster:
        res = run_batch(sheet, cfg, tmp_path / "threads", scheduler=cluster.scheduler_address, progress=False)
    assert res.exit_code == 0, res.errors
    assert run_batch(sheet, cfg, tmp_path / "one", workers=0, progress=False).exit_code == 0
    runs = {k: json.loads(RunLayout(tmp_path / k).run_json.read_text()) for k in ("threads", "one")}
    assert runs["threads"]["zone_pass_tasks"] == 4 and runs["one"]["zone_pass_tasks"] == 2  # 2 parts per sample
    for sid in two["sample_id"]:
        assert runs["threads"]["samples"][sid]["step_b"]["zone_threads"] == 2
        assert runs["one"]["samples"][sid]["step_b"]["zone_threads"] == 1
    a, b = _tables(tmp_path / "threads"), _tables(tmp_path / "one")
    for name in ("cells", "infiltration", "zones"):
        pd.testing.assert_frame_equal(a[name], b[name])
    lays = {k: RunLayout(tmp_path / k) for k in ("threads", "one")}
    pd.testing.assert_frame_equal(pd.read_parquet(lays["threads"].zone_thresholds), pd.read_parquet(lays["one"].zone_thresholds))
    key = ["zone", "channel", "cell_id"]
    for sid in two["sample_id"]:
        at = {k: pd.read_parquet(lay.sample(sid).zone_cell_signal).sort_values(key).reset_index(drop=True)
              for k, lay in lays.items()}
        pd.testing.assert_frame_equal(at["threads"], at["one"])
        assert not list(lays["threads"].sample(sid).root.glob("*.part*.parquet"))  # the parts were joined
