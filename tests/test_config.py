from pathlib import Path

import pytest
import yaml

from chemozone.config import (
    Config,
    ZoneConfig,
    config_from_dict,
    config_hash,
    dump_config,
    load_config,
    load_gates_file,
    save_gates_file,
)
from chemozone.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_round_trip(tmp_path):
    cfg = Config()
    path = tmp_path / "c.yaml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_example_config_is_valid_and_documented():
    path = ROOT / "configs" / "example.yaml"
    cfg = load_config(path)
    assert cfg.zones, "the example config defines zones"
    # every key line carries a one-line comment
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#") and ":" in s and not s.startswith("- {"):
            assert "#" in line, f"configs/example.yaml line {i} has no comment: {line!r}"


def test_example_covers_every_section():
    data = yaml.safe_load((ROOT / "configs" / "example.yaml").read_text())
    assert set(Config.model_fields) <= set(data)


def test_relative_paths_resolve_against_config(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("samples:\n  sheet: s.csv\nphenotypes:\n  gates_file: gates.yaml\n")
    cfg = load_config(p)
    assert cfg.samples.sheet == (tmp_path / "sub" / "s.csv").resolve()
    assert cfg.phenotypes.gates_file == (tmp_path / "sub" / "gates.yaml").resolve()


@pytest.mark.parametrize(
    "data, match",
    [
        ({"zones": [{"name": "a", "channels": ["X"]}, {"name": "b", "channels": ["Y"], "smooth_um": -3}]},
         r"zones\[1\]\.smooth_um: must be > 0, got -3"),
        ({"panel": {"pixel_size": 0.5}}, r"panel\.pixel_size: unknown key"),
        ({"segmentation": {"method": "stardist"}}, r"segmentation\.method: must be one of"),
        ({"segmentation": {"nucleus_diameter_um": "big"}}, r"segmentation\.nucleus_diameter_um: .*got 'big'"),
        ({"segmentation": {"min_nucleus_area_um2": 50, "max_nucleus_area_um2": 10}}, r"must be smaller than"),
        ({"phenotypes": {"rules": [{"cell_type": "X", "pos": ["CD3"], "neg": ["CD3"]}]}},
         r"rule 'X' requires \['CD3'\] both positive and negative"),
        ({"phenotypes": {"rules": [{"cell_type": "X"}]}}, r"rule 'X' has no markers"),
        ({"phenotypes": {"rules": [{"pos": ["CD3"]}]}}, r"phenotypes\.rules\[0\]\.cell_type: required key is missing"),
        ({"phenotypes": {"markers": {"CD3": {"gate": {"method": "manual"}}}}}, r"method 'manual' needs a 'value'"),
        ({"zones": [{"name": "z", "source": "pixels"}]}, r"zone 'z' with source 'pixels' needs 'channels'"),
        ({"zones": [{"name": "z", "source": "producers"}]}, r"needs 'producer_marker'"),
        ({"zones": [{"name": "z", "channels": ["A"], "bands_um": [100, 25]}]}, r"bands_um must be increasing"),
        ({"zones": [{"name": "z", "channels": ["A"]}, {"name": "z", "channels": ["B"]}]}, r"zone names must be unique"),
        ({"zones": [{"name": "z", "channels": ["A"], "threshold": {"mode": "absolute"}}]}, r"mode 'absolute' needs a 'value'"),
        ({"spatial": {"cognate_pairs": [{"zone": "nope", "receptor": "CXCR2"}]}}, r"'nope' is not a configured zone"),
        ({"spatial": {"distance_bands_um": [50, 10]}}, r"spatial\.distance_bands_um: must be at least two increasing"),
        ({"spatial": {"overlap_zones": ["nope"]}}, r"spatial\.overlap_zones\[0\] 'nope' is not a zone mask"),
        ({"zones": [{"name": f"z{i}", "channels": ["A"]} for i in range(9)],
          "spatial": {"overlap_zones": [f"z{i}" for i in range(9)]}},
         r"spatial\.overlap_zones: list should have at most 8 items"),
        ({"run": {"workers": 0}}, r"run\.workers: must be > 0, got 0"),
        ([1, 2], r"top level must be a mapping"),
    ],
)
def test_config_errors_name_the_yaml_path(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data, source="exp.yaml")


def test_error_message_is_one_line_and_names_source():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"panel": {"bogus": 1, "other": 2}}, source="exp.yaml")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("exp.yaml: ") and "and 1 more" in msg


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("panel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(bad)


def test_gates_file_round_trip_and_errors(tmp_path):
    p = save_gates_file({"CD3": {"*": 1.5, "s1": 2.0}}, tmp_path / "g.yaml")
    assert load_gates_file(p) == {"CD3": {"*": 1.5, "s1": 2.0}}
    (tmp_path / "flat.yaml").write_text("CD8: 3\n")
    assert load_gates_file(tmp_path / "flat.yaml") == {"CD8": {"*": 3.0}}
    with pytest.raises(ConfigError, match="gates file not found"):
        load_gates_file(tmp_path / "missing.yaml")
    (tmp_path / "b1.yaml").write_text("gates:\n  CD3: {s1: high}\n")
    with pytest.raises(ConfigError, match=r"gates\.CD3: thresholds must be numbers"):
        load_gates_file(tmp_path / "b1.yaml")
    (tmp_path / "b2.yaml").write_text("gates:\n  CD3: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"gates\.CD3: expected a number"):
        load_gates_file(tmp_path / "b2.yaml")
    (tmp_path / "b3.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must map marker"):
        load_gates_file(tmp_path / "b3.yaml")
    (tmp_path / "b4.yaml").write_text("gates: {a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_gates_file(tmp_path / "b4.yaml")


def test_analysis_grid_has_its_own_section_and_old_key_still_loads():
    from chemozone.config import ConfigError, config_from_dict

    assert config_from_dict({}).analysis_grid.pixel_size_um == 2.0
    assert config_from_dict({"analysis_grid": {"pixel_size_um": 4}}).analysis_grid.pixel_size_um == 4.0
    with pytest.warns(DeprecationWarning, match=r"tissue.grid_um is deprecated.*analysis_grid.pixel_size_um"):
        cfg = config_from_dict({"tissue": {"grid_um": 3.0, "smooth_um": 8}})
    assert cfg.analysis_grid.pixel_size_um == 3.0 and cfg.tissue.smooth_um == 8.0
    with pytest.raises(ConfigError, match=r"tissue.grid_um \(3.0\) and analysis_grid.pixel_size_um \(2.0\) disagree"):
        config_from_dict({"tissue": {"grid_um": 3.0}, "analysis_grid": {"pixel_size_um": 2.0}})
    with pytest.raises(ConfigError, match=r"analysis_grid.pixel_size_um: must be > 0"):
        config_from_dict({"analysis_grid": {"pixel_size_um": -1}})


def test_pixel_zone_default_threshold_is_halfmax_when_its_producers_are_gated():
    """The README's recommended mode is the default wherever it can run: a pixel zone without a threshold key gets
    halfmax when its producer marker (its channel, or producer_marker) is gated, else reference q 0.99; an explicit
    threshold is kept, and the choice survives a round trip through the run's config record."""
    cfg = config_from_dict({
        "phenotypes": {"markers": {"CXCL10": {"compartment": "cytoplasm"}, "CXCL8": {}}},
        "zones": [{"name": "CXCL10", "channels": ["CXCL10"]},
                  {"name": "CCL5", "channels": ["CCL5"]},
                  {"name": "IL8", "channels": ["IL8"], "producer_marker": "CXCL8"},
                  {"name": "Q", "channels": ["CXCL10"], "threshold": {"quantile": 0.95}},
                  {"name": "T", "source": "tumor", "channels": ["panCK"]}]})
    modes = {z.name: z.threshold.mode for z in cfg.zones}
    assert modes == {"CXCL10": "halfmax", "CCL5": "reference", "IL8": "halfmax", "Q": "reference", "T": "pooled"}
    assert cfg.zones[1].threshold.quantile == 0.99 and cfg.zones[3].threshold.quantile == 0.95
    again = config_from_dict(cfg.model_dump(mode="json"))
    assert [z.threshold.mode for z in again.zones] == list(modes.values())


def test_default_threshold_never_changes_a_zone_shared_with_another_config():
    zone = ZoneConfig(name="CXCL10", channels=["CXCL10"])
    gated = Config(phenotypes={"markers": {"CXCL10": {}}}, zones=[zone])
    plain = Config(zones=[zone])
    assert gated.zones[0].threshold.mode == "halfmax" and plain.zones[0].threshold.mode == "reference"
    assert zone.threshold.mode == "reference" and "threshold" not in zone.model_fields_set
