"""chemozone.report: the HTML report of a fabricated run, rendered in real headless Chromium."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import types

import numpy as np
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
