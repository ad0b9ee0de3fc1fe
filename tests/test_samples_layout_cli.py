import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from chemozone.cli import main
from chemozone.config import config_from_dict
from chemozone.errors import SampleSheetError
from chemozone.io import write_ome_tiff
from chemozone.layout import RunLayout, atomic_path, atomic_write_json, file_fingerprint, write_parquet
from chemozone.samples import load_samples, parse_filename


def _tiny(path, channels=("DAPI", "CD3")):
    arr = np.full((len(channels), 32, 32), 7, np.uint16)
    return write_ome_tiff(path, arr, channels=list(channels), pixel_size_um=0.5, tile_px=16)


def _sheet(folder, rows, header="sample_id,image,patient,radiation,dose_gy"):
    p = folder / "samples.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_sheet_resolves_images_and_keeps_extra_columns(tmp_path):
    _tiny(tmp_path / "a.ome.tif")
    _tiny(tmp_path / "b.ome.tif")
    _sheet(tmp_path, ["s1,a.ome.tif,P1,Photon,0,r1", "s2,b.ome.tif,P1,carbon,2.5 Gy,r2"],
           header="sample_id,image,patient,radiation,dose_gy,replicate")
    df = load_samples(tmp_path)
    assert list(df.columns[:5]) == ["sample_id", "image", "patient", "radiation", "dose_gy"]
    assert df["dose_gy"].tolist() == [0.0, 2.5]
    assert df["radiation"].tolist() == ["photon", "carbon"]
    assert df["replicate"].tolist() == ["r1", "r2"]
    assert os.path.isabs(df["image"][0])


@pytest.mark.parametrize(
    "rows, match",
    [
        (["s1,a.ome.tif,P1,photon,0", "s1,a.ome.tif,P1,photon,2"], r"row 3: duplicate sample_id 's1' \(also in .*row 2\)"),
        (["bad id,a.ome.tif,P1,photon,0"], r"row 2: sample_id 'bad id' is not filesystem-safe"),
        (["../x,a.ome.tif,P1,photon,0"], r"sample_id '../x' is not filesystem-safe"),
        (["s1,missing.tif,P1,photon,0"], r"row 2: image file not found: .*missing.tif"),
        (["s1,a.ome.tif,P1,photon,two"], r"row 2: dose_gy 'two' of sample 's1' is not a number"),
        (["s1,a.ome.tif,P1,photon,-1"], r"dose_gy -1.0 of sample 's1' must be >= 0"),
        ([",a.ome.tif,P1,photon,0"], r"row 2: empty sample_id"),
    ],
)
def test_sheet_errors_name_the_row(tmp_path, rows, match):
    _tiny(tmp_path / "a.ome.tif")
    _sheet(tmp_path, rows)
    with pytest.raises(SampleSheetError, match=match):
        load_samples(tmp_path)


def test_sheet_missing_columns_and_paths(tmp_path):
    (tmp_path / "samples.csv").write_text("id,file\n1,a.tif\n")
    with pytest.raises(SampleSheetError, match=r"missing column\(s\) \['sample_id', 'image'\]"):
        load_samples(tmp_path)
    with pytest.raises(SampleSheetError, match="input not found"):
        load_samples(tmp_path / "nope")
    cfg = config_from_dict({"samples": {"sheet": str(tmp_path / "other.csv")}})
    with pytest.raises(SampleSheetError, match="other.csv: sample sheet not found"):
        load_samples(tmp_path, cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SampleSheetError, match="no images found"):
        load_samples(empty)


def test_filename_pattern(tmp_path):
    _tiny(tmp_path / "P7_carbon_2.5Gy_r1.ome.tif")
    _tiny(tmp_path / "P7_photon_0Gy_r2.ome.tif")
    cfg = config_from_dict({"samples": {"filename_pattern": "{patient}_{radiation}_{dose_gy}Gy_{replicate}"}})
    df = load_samples(tmp_path, cfg)
    assert df["sample_id"].tolist() == ["P7_carbon_2.5Gy_r1", "P7_photon_0Gy_r2"]
    assert df["dose_gy"].tolist() == [2.5, 0.0] and df["replicate"].tolist() == ["r1", "r2"]
    _tiny(tmp_path / "weird.ome.tif")
    with pytest.raises(SampleSheetError, match=r"weird.ome.tif: file name 'weird' does not match"):
        load_samples(tmp_path, cfg)
    with pytest.raises(SampleSheetError, match="appears twice"):
        parse_filename("a_b.tif", "{x}_{x}")


def test_atomic_writes_leave_no_partial_file(tmp_path):
    target = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"a": [1, 2]}), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    atomic_write_json(tmp_path / "r.json", {"x": np.int64(3)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 3}


def test_read_parquet_split_blocks_gives_the_same_frame(tmp_path):
    from chemozone.layout import read_parquet

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"cell_id": np.arange(1, 501, dtype=np.uint32), "x_um": rng.random(500),
                       "phenotype": rng.choice(["NK", "T", "other"], 500), "in_CXCL10": rng.random(500) < 0.3,
                       "n": rng.integers(0, 9, 500)})
    path = write_parquet(df, tmp_path / "cells.parquet")
    plain, split = read_parquet(path), read_parquet(path, split_blocks=True)
    pd.testing.assert_frame_equal(split, plain)
    pd.testing.assert_frame_equal(split, df)
    pd.testing.assert_frame_equal(read_parquet(path, ["x_um", "phenotype"], split_blocks=True), df[["x_um", "phenotype"]])


def test_layout_paths_and_fingerprint(tmp_path):
    lay = RunLayout(tmp_path)
    assert lay.cells("s1") == tmp_path / "samples" / "s1" / "cells.parquet"
    assert lay.masks("s1").name == "masks.ome.zarr"
    lay.sample_dir("s1").mkdir(parents=True)
    assert lay.sample_ids() == ["s1"]
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    fp = file_fingerprint(f)
    assert fp["size"] == 3 and fp["hash_kind"] == "full"
    assert fp["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_file_fingerprint_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    """A run fingerprints each input for run.json and again for step A's stamp: the second call reads nothing; a
    rewritten file (new size or mtime) is read again, and a returned record is the caller's to change."""
    import builtins

    from chemozone import layout

    f = tmp_path / "img.tif"
    f.write_bytes(b"a" * 1000)
    reads = []
    real_open = builtins.open

    def counting_open(path, *args, **kwargs):
        if str(path) == str(f):
            reads.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    one = layout.file_fingerprint(f)
    one["sha256"] = "changed by the caller"
    two = layout.file_fingerprint(f)
    assert len(reads) == 1 and two["sha256"] != "changed by the caller" and two["size"] == 1000
    f.write_bytes(b"b" * 1000)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewrite a second later, same size
    three = layout.file_fingerprint(f)
    assert len(reads) == 2 and three["sha256"] != two["sha256"]


def test_cli_version_and_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "chemozone" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["run"])  # missing arguments
    assert e.value.code == 2
    assert main([]) == 2


def test_cli_validate_reports_good_and_broken_images(tmp_path, capsys):
    _tiny(tmp_path / "good.ome.tif")
    (tmp_path / "broken.ome.tif").write_bytes(b"II*\x00garbage")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("panel: {nuclear_channel: DAPI}\n")
    code = main(["validate", str(cfg), str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "good:" in out and "DAPI" in out and "0.5 µm/px" in out
    assert "broken.ome.tif" in out and "problem:" in out


def test_cli_validate_missing_channel_and_config_error(tmp_path, capsys):
    _tiny(tmp_path / "good.ome.tif")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("zones:\n  - {name: z, channels: [CXCL8]}\n")
    assert main(["validate", str(cfg), str(tmp_path)]) == 1
    assert "channel 'CXCL8' not found; the image has channels ['DAPI', 'CD3']" in capsys.readouterr().out
    cfg.write_text("zones:\n  - {name: z, channels: [CXCL8], smooth_um: -3}\n")
    assert main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "zones[0].smooth_um: must be > 0, got -3" in err


def test_cli_validate_catches_a_qc_channel_typo_before_a_run(tmp_path, capsys):
    _tiny(tmp_path / "a.ome.tif")
    _tiny(tmp_path / "b.ome.tif")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {qc_channels: [DAPI, CD33]}\n")
    assert main(["validate", str(cfg), str(tmp_path)]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1  # one config problem, reported once for the two images
    assert "run.qc_channels: channel 'CD33' is not in the image (channels: ['DAPI', 'CD3'])" in problems[0]
    # chemozone run refuses before any work, with the same one-line message
    assert main(["run", str(tmp_path), "--config", str(cfg), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "refusing to start" in err and "run.qc_channels: channel 'CD33'" in err
    assert not (tmp_path / "out" / "run.json").exists()
    # without a QC picture the names do not matter; with the right name the inputs are fine
    cfg.write_text("run: {qc_channels: [DAPI, CD33], write_qc: false}\n")
    assert main(["validate", str(cfg), str(tmp_path)]) == 0
    cfg.write_text("run: {qc_channels: [DAPI, CD3]}\n")
    assert main(["validate", str(cfg), str(tmp_path)]) == 0


def test_validate_inputs_names_qc_channel_typo(tmp_path):
    from chemozone.errors import RunError
    from chemozone.validate import runnable_inputs

    _tiny(tmp_path / "a.ome.tif", channels=("HH3", "CD45"))
    cfg = config_from_dict({"panel": {"nuclear_channel": "HH3"}, "run": {"qc_channels": ["HH3", "CD54"]}})
    with pytest.raises(RunError, match=r"refusing to start: sample 'a': run\.qc_channels: channel 'CD54' is not in "
                                       r"the image \(channels: \['HH3', 'CD45'\]\)"):
        runnable_inputs(tmp_path, cfg)


def test_console_script_one_line_error(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "chemozone")
    res = subprocess.run([exe, "validate", str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "config file not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_parquet_helpers_round_trip_and_select_columns(tmp_path):
    from chemozone.layout import read_parquet, write_parquet

    df = pd.DataFrame({"cell_id": np.arange(5, dtype=np.uint32), "x_um": np.linspace(0, 1, 5), "ph": list("abcde")})
    write_parquet(df, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "t.parquet"), df)
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "t.parquet", columns=["x_um"]), df[["x_um"]])
