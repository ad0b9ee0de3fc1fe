"""chemozone.report: the HTML report of a fabricated run, rendered in real headless Chromium."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import types

import numpy as np
import pandas as pd
import pytest

from chemozone.cli import cli_report
from chemozone.errors import MissingStepError, RunError
from chemozone.report import write_report
from chemozone.testing import fabricate_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECTIONS = ["summary", "failures", "qc", "gates", "zones", "infiltration", "cognate", "modules"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run"
    info = fabricate_run(out, n_patients=3, seed=2, with_images=1, cells_per_sample=120)
    path = cli_report(types.SimpleNamespace(out=out)) == 0 and out / "report.html"
    return info, path


def test_report_self_contained(report):
    info, path = report
    text = path.read_text(encoding="utf-8")
    for s in SECTIONS:
        assert f"id='{s}'" in text
    assert info["failed"][0] in text and "fabricated failure" in text
    # infiltration: the metric choice is stated and the axes say which denominator
    assert "Which metric answers which question" in text and "cells per mm² of zone" in text
    assert "receptor+ cells inside zone per mm² tissue" in text
    # no external resources: every src is a data URI
    srcs = re.findall(r'src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text
    from PIL import Image

    for s in srcs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert im.size[0] > 20 and im.size[1] > 20
    assert len(re.findall(r"<img class=\"fig\"", text)) >= 5  # gates, zones, infiltration, cognate, modules


def test_report_errors(tmp_path):
    with pytest.raises(RunError, match="no run.json"):
        write_report(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(MissingStepError, match="samples.parquet.*chemozone run"):
        write_report(tmp_path)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium(report, tmp_path):
    _, path = report
    png = tmp_path / "shot.png"
    common = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([CHROMIUM, *common, f"--screenshot={png}", "--window-size=1400,3000", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    arr = np.asarray(Image.open(png).convert("L"), float)
    assert arr.shape == (3000, 1400)
    assert arr.std() > 10 and (arr < 128).mean() > 0.01  # not blank: text and figures drawn
    # the DOM after load: every <img> is present and decoded (naturalWidth > 0 is set by the browser script)
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text(encoding="utf-8").replace(
        "</body>", "<script>window.addEventListener('load',()=>{const r=[...document.images].map("
                   "i=>i.complete&&i.naturalWidth>0?1:0);document.body.setAttribute('data-imgs',r.join(''));});"
                   "</script></body>"), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, *common, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         check=True, capture_output=True, timeout=120, text=True).stdout
    m = re.search(r'data-imgs="([01]*)"', dom)
    assert m, "load script did not run"
    n_img = len(re.findall(r"<img ", path.read_text(encoding="utf-8")))
    assert m.group(1) == "1" * n_img


@pytest.mark.slow
def test_report_on_real_tiny_run(tmp_path):
    """Integration: the real runner on the 'tiny' synthetic cohort, then the report and the stats loaders."""
    pytest.importorskip("chemozone.run")
    from chemozone import stats
    from chemozone.run import run_batch
    from chemozone.synth import generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, preset="tiny")
    res = run_batch(cohort, cohort / "config.yaml", tmp_path / "run", workers=1, progress=False, in_process=True)
    assert res.exit_code == 0
    path = write_report(tmp_path / "run")
    text = path.read_text(encoding="utf-8")
    for s in SECTIONS:
        assert f"id='{s}'" in text
    assert len(re.findall(r"<img class=\"fig\"", text)) >= 3
    # a real run writes zone_overlap.parquet: the report adds the receptor− trends adjusted for other zones
    assert "adjusted for the other zones" in text and "p (BH-FDR)" in text
    run = stats.load_run(tmp_path / "run")
    assert len(run["zone_overlap"]) and len(stats.receptor_overlap_counts(run))
    assert len(stats.metric_table(run, "zone_area")) == len(run["samples"])
    # how the zones were called: every distinct threshold of zone_thresholds.parquet, with the patients it served
    zt = pd.read_parquet(tmp_path / "run" / "zone_thresholds.parquet")
    assert len(run["zone_thresholds"]) == len(zt) and "patient" in run["zone_thresholds"].columns
    table = text[text.index("Zone thresholds (the cohort step's"):]
    table = table[:table.index("</details>")]
    for (_, thr), g in zt.merge(run["samples"][["sample_id", "patient"]]).groupby(["zone", "threshold"]):
        assert f"<td>{thr:.4g}</td>" in table and f"<td>{', '.join(sorted(set(g['patient'])))}</td>" in table
    # and how each configured zone is built: one row per zone of the run's config, in its order
    defs = text[text.index("Zone definitions (the run's config)"):]
    defs = defs[:defs.index("</details>")]
    cfg_zones = [z["name"] for z in run["run"]["config"]["zones"]]
    assert re.findall(r"<tr>\s*<td>(.*?)</td>", defs) == cfg_zones
    assert "CXCL8 smoothed at 10 µm, threshold halfmax (fraction 0.5), pieces ≥ 200 µm²" in defs


def test_zone_definitions_in_words_for_every_source():
    """Each source's settings, written by hand from the config keys; no table without zones in the config."""
    from chemozone.config import ZoneConfig
    from chemozone.report import _zone_definitions

    zones = [ZoneConfig(name="IFN", channels=["CXCL10", "CCL5"], smooth_um=8, threshold={"mode": "reference"}),
             ZoneConfig(name="ABS", channels=["CXCL8"], threshold={"mode": "absolute", "value": 400}, min_area_um2=0),
             ZoneConfig(name="P", source="producers", producer_marker="CXCL8", producer_cell_types=["Tumor"]),
             ZoneConfig(name="M", source="producers", producer_marker="CXCL10", radius_um=15, min_producers=3),
             ZoneConfig(name="H", source="producers", producer_marker="CXCL10", milieu="hull", link_um=25,
                        min_producers=3, radius_um=10, hull_ratio=0.3),
             ZoneConfig(name="T", source="tumor", channels=["panCK"], smooth_um=4),
             ZoneConfig(name="TC", source="tumor_cells", tumor_column="tissue_category", tumor_values=["Tumor"]),
             ZoneConfig(name="R", source="regions", region_class="Necrosis")]
    run = {"run": {"config": {"zones": [z.model_dump(mode="json") for z in zones]}}}
    rows = re.findall(r"<tr>\s*<td>(.*?)</td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>", _zone_definitions(run))
    assert rows == [
        ("IFN", "pixels", "CXCL10 + CCL5 smoothed at 8 µm, threshold reference (q 0.99), pieces ≥ 200 µm²"),
        ("ABS", "pixels", "CXCL8 smoothed at 10 µm, threshold absolute (value 400.0), pieces ≥ 0 µm²"),
        ("P", "producers", "tissue within 20 µm of CXCL8+ cells (Tumor)"),
        ("M", "producers", "tissue with ≥ 3 CXCL10+ cells within 15 µm"),
        ("H", "producers", "CXCL10+ cells linked within 25 µm, patches of ≥ 3; concave hull (ratio 0.3) widened by "
                           "10 µm (Hoch et al. 2022)"),
        ("T", "tumor", "panCK smoothed at 4 µm, threshold pooled; bands 25, 100 µm"),
        ("TC", "tumor_cells", "cells with tissue_category in Tumor; bands 25, 100 µm"),
        ("R", "regions", "annotated regions of class Necrosis")]
    assert _zone_definitions({"run": {"config": {"zones": []}}}) == "" and _zone_definitions({"run": {}}) == ""
    # an older run.json's zone without the newer keys reads with the config's defaults
    old = _zone_definitions({"run": {"config": {"zones": [{"name": "H", "source": "producers", "producer_marker": "C"}]}}})
    assert "tissue within 20 µm of C+ cells" in old


def test_zone_thresholds_table_groups_samples_by_threshold():
    """One row per distinct (zone, channel, mode, threshold, offsets), listing the patients it served and the
    fallback warnings; no table without thresholds (a run without pixel zones, or an older run folder)."""
    from chemozone.report import _zone_thresholds

    zt = pd.DataFrame({"sample_id": ["a0", "a8", "b0", "b8"], "patient": ["A", "A", "B", "B"], "zone": "C",
                       "channel": "C", "mode": "halfmax_f0.5", "threshold": [60.5, 60.5, 70.0, 70.0],
                       "warning": ["", "", "too few", ""], "tumor_offset": [-39.5, -39.5, 0.0, 0.0],
                       "stroma_offset": [39.5, 39.5, 0.0, 0.0]})
    html_text = _zone_thresholds({"zone_thresholds": zt})
    rows = re.findall(r"<tr>\s*(.*?)\s*</tr>", html_text, flags=re.S)  # the header row has a style
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows]
    assert cells == [["C", "C", "halfmax_f0.5", "60.5", "-39.5", "39.5", "2", "A", ""],
                     ["C", "C", "halfmax_f0.5", "70", "0", "0", "2", "B", "too few"]]
    assert "Tumor and stroma offsets" in html_text
    assert "Tumor and stroma offsets" not in _zone_thresholds({"zone_thresholds": zt.assign(tumor_offset=0.0,
                                                                                           stroma_offset=0.0)})
    assert _zone_thresholds({"zone_thresholds": pd.DataFrame({"sample_id": pd.Series(dtype=str)})}) == ""
    assert _zone_thresholds({}) == ""



def test_zone_section_shows_the_thresholds_without_a_dose_figure(tmp_path):
    """The thresholds table belongs to the zones section whatever its dose figure says (here: no zones table)."""
    from chemozone.report import _section

    zt = pd.DataFrame({"sample_id": ["a0"], "patient": ["A"], "zone": "C", "channel": "C", "mode": "absolute",
                       "threshold": [5.0], "warning": [""], "tumor_offset": [0.0], "stroma_offset": [0.0]})
    run = {"run": {"config": {}}, "zones": pd.DataFrame({"sample_id": pd.Series(dtype=str)}), "zone_thresholds": zt}
    text = _section("zones", run, tmp_path, 0, 0)
    assert "No zones table (run the zones step)." in text and "Zone thresholds (the cohort step's" in text


# ---------------------------------------------------------------------------------- any cohort renders (issue 14)
def _reshape_run(out, *, samples_fn, keep=None):
    """Rewrite a fabricated run's sample sheet (and drop the metadata the cohort tables carry, as a real run's
    merge would have joined it from that sheet)."""
    import pandas as pd

    from chemozone.layout import RunLayout

    lay = RunLayout(out)
    s = pd.read_parquet(lay.cohort_samples)
    for p in (lay.cohort_cells, lay.cohort_infiltration, lay.cohort_zones):
        t = pd.read_parquet(p)
        t = t.drop(columns=[c for c in ("radiation", "dose_gy", "patient", "replicate") if c in t.columns])
        if keep is not None:
            t = t[t["sample_id"].isin(keep)]
        t.to_parquet(p)
    if keep is not None:
        s = s[s["sample_id"].isin(keep)]
    samples_fn(s).to_parquet(lay.cohort_samples)


def _one_condition(s):
    return s.assign(radiation="photon", dose_gy=10.0)


def _no_radiation_column(s):
    return s.drop(columns=["radiation"])


def _radiation_na(s):
    import pandas as pd

    return s.assign(radiation=pd.array([pd.NA] * len(s), dtype="string"))


def _no_dose(s):
    return s.assign(dose_gy=float("nan"))


@pytest.mark.parametrize("shape, notes", [
    ("one_condition", [r"No zone area fraction vs dose figure: every sample has the same dose \(10 Gy\)\. The "
                       r"per-sample values:", r"No dose trend tests: every sample has the same dose \(10 Gy\)\."]),
    ("one_sample", [r"No zone area fraction vs dose figure: every sample has the same dose \(0 Gy\)",
                    r"Fewer than two chemokine markers vary among the \d+ tumor cells \(positive in some cells, "
                    r"negative in others; varying: none\): no co-expression to correlate\."]),
    ("radiation_na", []),
    ("no_radiation_column", []),
    ("no_dose", [r"No zone area fraction vs dose figure: no sample has a dose_gy\.",
                 r"No dose trend tests: no sample has a dose_gy\."]),
])
def test_report_renders_for_any_cohort_through_the_cli(tmp_path, capsys, shape, notes):
    from chemozone.cli import main

    out = tmp_path / "run"
    info = fabricate_run(out, n_patients=2, seed=4, n_failed=0, cells_per_sample=120)
    first = info["samples"]["sample_id"].iloc[0]
    fn = {"one_condition": _one_condition, "one_sample": lambda s: s, "radiation_na": _radiation_na,
          "no_radiation_column": _no_radiation_column, "no_dose": _no_dose}[shape]
    _reshape_run(out, samples_fn=fn, keep=[first] if shape == "one_sample" else None)
    if shape == "one_sample":  # a sham sample whose tumor cells express no chemokine (the modules' corner case)
        import pandas as pd

        from chemozone.layout import RunLayout

        cells = pd.read_parquet(RunLayout(out).cohort_cells)
        cells[[c for c in cells.columns if c.startswith(("CXCL", "CCL")) and c.endswith("_pos")]] = False
        cells.to_parquet(RunLayout(out).cohort_cells)
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'report.html'}"
    text = (out / "report.html").read_text(encoding="utf-8")
    assert re.findall(r"<section id='([a-z]+)'>", text) == ["warnings"] + SECTIONS
    assert "could not be drawn" not in text and "Traceback" not in text
    for pattern in notes:
        assert re.search(pattern, text), pattern
    if shape in ("radiation_na", "no_radiation_column"):  # doses vary: fitted as one arm named 'unspecified'
        assert len(re.findall(r"<img class=\"fig\"", text)) >= 4 and "unspecified" in text


def test_a_failing_section_becomes_a_sentence(report, monkeypatch, tmp_path):
    import chemozone.report as rep

    def boom(run):
        raise RuntimeError("cannot\ndraw")

    info, _ = report
    monkeypatch.setattr(rep, "_modules", boom)
    text = rep.render_report(info["out"])
    assert ("This section could not be drawn for this cohort (RuntimeError: cannot draw); the tables in the run "
            "folder are complete.") in text
    assert "id='gates'" in text and "id='modules'" in text


def test_report_in_two_processes_is_the_same_report(report, caplog):
    """Heavy sections rendered in spawned worker processes (as after a 2-worker run) give the same HTML, figures and
    bootstrap intervals included, as one process; only the time stamp differs."""
    import chemozone.report as rep

    info, _ = report
    stamp = re.compile(r"written \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    one = stamp.sub("", rep.render_report(info["out"]))
    two = stamp.sub("", rep.render_report(info["out"], processes=2))
    assert "id='infiltration'" in two and "could not be drawn" not in two
    assert two == one
    # as tasks of an executor (a run's Dask workers through task_executor): here one that runs each task when it is
    # submitted, with the same contract (submit -> future), so no two sections draw at once in this process
    from concurrent.futures import Future

    submitted = []

    class Inline:
        def __init__(self, lose=()):
            self.lose = lose

        def submit(self, fn, *args, **kwargs):
            submitted.append(args[1])
            f = Future()
            if args[1] in self.lose:  # the worker under this task was lost
                f.set_exception(RuntimeError("KilledWorker"))
            else:
                f.set_result(fn(*args, **kwargs))
            return f

    tasks = stamp.sub("", rep.render_report(info["out"], executor=Inline()))
    assert sorted(submitted) == sorted(rep._HEAVY)
    assert tasks == one
    # a worker lost under a task: that section is rendered here instead, with a warning
    with caplog.at_level("WARNING", logger="chemozone"):
        lost = stamp.sub("", rep.render_report(info["out"], executor=Inline(lose=("zones",))))
    assert lost == one
    assert "report: section zones failed on a worker (RuntimeError: KilledWorker); rendering it here" in caplog.text


def test_report_when_worker_processes_cannot_start_is_the_same_report(report, caplog, monkeypatch):
    """A process pool whose processes cannot start (submit raises OSError) leaves every heavy section to this
    process, with a warning each: the same HTML."""
    import concurrent.futures as cf

    import chemozone.report as rep

    class NoProcesses(cf.ThreadPoolExecutor):
        def __init__(self, max_workers=None, mp_context=None):
            super().__init__(max_workers)

        def submit(self, fn, *args, **kwargs):
            raise OSError("cannot spawn")

    monkeypatch.setattr(cf, "ProcessPoolExecutor", NoProcesses)
    info, _ = report
    stamp = re.compile(r"written \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    one = stamp.sub("", rep.render_report(info["out"]))
    with caplog.at_level("WARNING", logger="chemozone"):
        two = stamp.sub("", rep.render_report(info["out"], processes=2))
    assert two == one
    assert caplog.text.count("failed on a worker (OSError: cannot spawn); rendering it here") == len(rep._HEAVY)


def test_old_run_json_without_warnings_says_so(report):
    info, path = report
    text = path.read_text(encoding="utf-8")
    assert "run.json has no plausibility record (a run made by an older chemozone)" in text


@pytest.mark.slow
def test_report_on_one_condition_without_radiation_column_real_run(tmp_path, capsys):
    """Integration through the CLI: the tiny cohort with every sample at one dose of one radiation type (the
    cohort on which the report crashed with KeyError 'group'), the radiation column removed, and a second run
    of the same cohort without zones."""
    import yaml

    from chemozone.cli import main
    from chemozone.synth import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", preset="tiny", seed=3)
    sheet = (cohort / "samples.csv").read_text().splitlines()
    rows = [r.split(",") for r in sheet]
    i_rad, i_dose = rows[0].index("radiation"), rows[0].index("dose_gy")
    rows = [[v for j, v in enumerate(r) if j != i_rad] if k == 0 else
            [("10" if j == i_dose else v) for j, v in enumerate(r) if j != i_rad] for k, r in enumerate(rows)]
    (cohort / "samples.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    cfg = yaml.safe_load((cohort / "config.yaml").read_text())
    for marker in cfg["phenotypes"]["markers"].values():  # no sham: pooled gates, zones from the pooled background
        marker.pop("gate", None)
    for zone in cfg["zones"]:
        if zone.get("source", "pixels") == "pixels":
            zone["threshold"] = {"mode": "background"}
    (cohort / "config.yaml").write_text(yaml.safe_dump(cfg))
    cfg["zones"], cfg["spatial"] = [], {"cognate_pairs": []}
    (cohort / "nozones.yaml").write_text(yaml.safe_dump(cfg))
    for name, config in (("zones", "config.yaml"), ("nozones", "nozones.yaml")):
        out = tmp_path / name
        assert main(["run", str(cohort), "--config", str(cohort / config), "--out", str(out), "--workers", "0",
                     "--quiet"]) == 0
        assert capsys.readouterr().out.splitlines()[0].startswith("4/4 samples done")
        text = (out / "report.html").read_text(encoding="utf-8")
        assert "could not be drawn" not in text and re.findall(r"<section id='([a-z]+)'>", text)[0] == "warnings"
        if name == "zones":
            assert re.search(r"No zone area fraction vs dose figure: every sample has the same dose \(10 Gy\)", text)
        else:
            assert text.count("No zones configured (the config&#x27;s zones list is empty)") == 3


def test_report_intervals_follow_stats_ci_method(report, tmp_path):
    """``stats.ci_method`` of the run's config reaches the report's dose-response fits (and is shown)."""
    import json
    import shutil

    from chemozone.config import config_from_dict
    from chemozone.errors import ConfigError
    from chemozone.report import render_report

    info, path = report
    out = tmp_path / "run"
    shutil.copytree(path.parent, out)
    rec = json.loads((out / "run.json").read_text())
    rec.setdefault("config", {}).setdefault("stats", {})["ci_method"] = "percentile"
    (out / "run.json").write_text(json.dumps(rec))
    text = render_report(out)
    assert ">percentile<" in text and ">student-t<" not in text
    assert ">student-t<" in path.read_text(encoding="utf-8")  # the default
    with pytest.raises(ConfigError, match=r"stats.ci_method"):
        config_from_dict({"stats": {"ci_method": "wald"}})
