"""A stress sample in memory (:func:`generate_sample`), a cohort on disk (:func:`generate_cohort`) and the
command line (:func:`main`, ``python -m chemozone.stress OUT``)."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._panel import CHANNELS, MARKERS, MODULES, PIXEL_SIZE_UM, PRESETS, check_preset, parameters
from ._render import paint_labels, render
from ._scene import (
    chemokine_fields,
    marker_truth,
    nucleus_shapes,
    place_resident,
    recruit,
    territories,
    tissue_fields,
    upsample,
)


def patient_draws(patient: int, seed: int, preset: str = "default") -> dict[str, Any]:
    """A patient's random effects: immune density, producer Emax and baseline, per-channel staining scales.

    The spreads are the preset's ``patient_*_sd_log``; the draws come in a fixed order (the baseline last, 1.0
    when its spread is 0), so a patient keeps its staining in every preset.

    >>> patient_draws(0, 0) == patient_draws(0, 0), patient_draws(0, 0)["baseline_scale"]
    (True, 1.0)
    """
    rng = np.random.default_rng([int(seed), int(patient), 7])
    p = parameters(preset)
    out = {"immune_scale": float(rng.lognormal(0, p["patient_immune_sd_log"])),
           "emax_scale": float(rng.lognormal(0, p["patient_emax_sd_log"])),
           "stain": rng.lognormal(0, p["patient_stain_sd_log"], len(CHANNELS)).round(4).tolist()}
    out["baseline_scale"] = float(rng.lognormal(0, p["patient_baseline_sd_log"]))
    return out


def effective_dose(radiation: str, dose_gy: float, p: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Photon-equivalent dose and each module's conservation of Emax for a (radiation, dose) of a preset.

    >>> effective_dose("carbon", 2.0, parameters("stats"))
    (5.0, {'CXCL10': 0.5, 'CCL5': 1.0})
    """
    from ..errors import ConfigError

    if radiation == "sham":
        if float(dose_gy) != 0:
            raise ConfigError(f"stress sample: radiation 'sham' needs dose_gy 0, got {dose_gy}")
        return 0.0, {m: 1.0 for m in MODULES}
    if radiation not in p["radiation"]:
        raise ConfigError(f"stress radiation '{radiation}' is not in preset '{p['preset']}': use sham or one of "
                          f"{', '.join(p['radiation'])} (or the preset that has it, e.g. --preset stats)")
    spec = p["radiation"][radiation]
    return float(dose_gy) * spec["effectiveness"], {m: float(spec["conservation"][m]) for m in MODULES}


def build_scene(shape: tuple[int, int], *, dose_gy: float, patient: dict[str, Any], rng: np.random.Generator,
                p: dict[str, Any], conservation: dict[str, float] | None = None) -> dict[str, Any]:
    """Everything of one sample but its pixels: tissue, cells, truth, producers, fields.

    ``dose_gy`` is the effective (photon-equivalent) dose; ``conservation`` {module: factor on Emax} (1.0).
    """
    px = p["pixel_size_um"]
    grid_px = max(1, int(round(p["zone"]["grid_um"] / px)))
    g_um = grid_px * px
    f = tissue_fields(rng, shape, px, grid_px, p)
    cells = place_resident(rng, f, g_um, p, patient["immune_scale"])
    terr = territories(rng, f["tissue_c"].shape, g_um, p)
    cons = conservation or {m: 1.0 for m in MODULES}
    emax = {m: patient["emax_scale"] * cons[m] for m in MODULES}
    chem = chemokine_fields(rng, cells, terr, f["tissue_c"], g_um, dose_gy, p, emax, patient.get("baseline_scale", 1.0))
    n_res = len(cells["xy"])
    cells = recruit(rng, cells, chem["F"], g_um, p)
    k = len(cells["xy"]) - n_res
    for m in MODULES:
        chem["producer"][m] = np.concatenate([chem["producer"][m], np.zeros(k, bool)])
        chem["amount"][m] = np.concatenate([chem["amount"][m], np.zeros(k)])
    truth = marker_truth(rng, cells, chem["producer"], p)
    for m in MODULES:
        truth["level"][m] = chem["amount"][m]
    tissue = upsample(f["tissue_level"], grid_px, shape) < 1
    stroma = np.clip(upsample((f["tissue_c"] & ~f["nests_c"]).astype(float), grid_px, shape), 0, 1) * tissue
    chem["F_full"] = {m: upsample(F, grid_px, shape) * tissue for m, F in chem["F"].items()}
    stain = np.asarray(patient["stain"]) * rng.lognormal(0, p["sample_stain_sd_log"], len(CHANNELS))
    return {"shape": shape, "pixel_size_um": px, "grid_px": grid_px, "cells": cells, "shapes": nucleus_shapes(rng, cells["type"]),
            "truth": truth, "chem": chem, "tissue": tissue, "stroma": stroma.astype(np.float32), "fibre": f["fibre"],
            "nests": upsample(f["nests_c"].astype(float), grid_px, shape) >= 0.5, "stain": stain}


def truth_table(scene: dict[str, Any], labels: dict[str, np.ndarray], sample_id: str):
    """One row per cell whose nucleus survived painting: position, areas, type and the truth flags."""
    import pandas as pd

    px = scene["pixel_size_um"]
    cells, nuclei = labels["cells"].ravel(), labels["nuclei"].ravel()
    n = len(scene["cells"]["xy"])
    area = np.bincount(cells, minlength=n + 1)[1:]
    narea = np.bincount(nuclei, minlength=n + 1)[1:]
    yy, xx = np.divmod(np.arange(cells.size), labels["cells"].shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(cells, weights=xx + 0.5, minlength=n + 1)[1:] / area
        cy = np.bincount(cells, weights=yy + 0.5, minlength=n + 1)[1:] / area
    c, t = scene["cells"], scene["truth"]
    df = pd.DataFrame({"sample_id": sample_id, "cell_id": np.arange(1, n + 1, dtype=np.uint32),
                       "x_um": cx * px, "y_um": cy * px, "cell_type": c["type"].astype(str),
                       "nucleus_area_um2": narea * px * px, "area_um2": area * px * px,
                       "in_tumor": c["in_nest"], "recruited": np.where(c["recruited"] == 0, "", c["recruited"]).astype(str)})
    for mk in MARKERS[1:]:
        df[f"{mk}_pos"] = t["pos"][mk]
    for m in MODULES:
        df[f"{m}_amount"] = scene["chem"]["amount"][m]
        zone = upsample(scene["chem"]["F"][m], scene["grid_px"], labels["cells"].shape) >= 0.5
        zone &= scene["tissue"]
        hit = np.bincount(cells, weights=zone.ravel().astype(float), minlength=n + 1)[1:]
        df[f"in_{m}"] = hit > area / 2
    return df[narea >= 8].reset_index(drop=True)


def generate_sample(*, size_px: int = 1024, dose_gy: float = 0.0, patient: int = 0, seed: int = 0,
                    sample_id: str = "sample", radiation: str = "photon", preset: str = "default",
                    pixels: bool = True) -> dict[str, Any]:
    """One stress sample in memory.

    Parameters
    ----------
    size_px : int
        Image side in pixels (:data:`PIXEL_SIZE_UM` µm each).
    dose_gy : float
        Physical dose; with the radiation's effectiveness it sets the fraction of chemokine producers.
    patient : int
        Patient index (random effects from :func:`patient_draws`).
    seed : int
        Same seed, same sample.
    sample_id : str
        Written into the truth table and mixed into the sample's seed.
    radiation : str
        ``sham`` (dose 0), ``photon`` or a radiation of the preset's ``radiation`` table (``carbon`` in ``stats``).
    preset : str
        One of :data:`PRESETS`; ``default`` gives the same pixels as before presets existed.
    pixels : bool
        False: truth only (labels, zones, truth table, info identical to ``pixels=True``), ``image`` None;
        about 3x faster, for statistics on the generator's truth over many simulated cohorts.

    Returns
    -------
    dict
        ``image`` uint16 (C, Y, X) or None; ``channels`` (file spellings); ``nuclei``, ``cells`` uint32 (Y, X);
        ``tissue``, ``tumor`` bool (Y, X); ``zones`` {chemokine: bool (Y, X)}; ``truth`` DataFrame (one row
        per cell); ``info`` dict (realised truth: zone fractions, producers, recruited cells, effective dose);
        ``pixel_size_um``.

    Examples
    --------
    >>> s = generate_sample(size_px=128, dose_gy=10, seed=1)
    >>> s["image"].shape, s["image"].dtype.name, s["cells"].dtype.name
    ((10, 128, 128), 'uint16', 'uint32')
    """
    p = parameters(preset)
    shape = (int(size_px), int(size_px))
    d_eff, cons = effective_dose(radiation, dose_gy, p)
    rng = np.random.default_rng([int(seed), int(patient), zlib.crc32(sample_id.encode())])
    sc = build_scene(shape, dose_gy=d_eff, patient=patient_draws(patient, seed, preset), rng=rng, p=p,
                     conservation=cons)
    lab = paint_labels(sc)
    image = render(rng, sc, p, lab)["image"] if pixels else None
    zones = {m: (upsample(F, sc["grid_px"], shape) >= p["zone"]["level"]) & sc["tissue"] for m, F in sc["chem"]["F"].items()}
    truth = truth_table(sc, lab, sample_id)
    return {"image": image, "channels": list(CHANNELS), "nuclei": lab["nuclei"], "cells": lab["cells"],
            "tissue": sc["tissue"], "tumor": sc["nests"] & sc["tissue"], "zones": zones, "truth": truth,
            "info": _sample_info(sc, zones, truth, d_eff, patient_draws(patient, seed, preset), cons, p),
            "pixel_size_um": p["pixel_size_um"]}


def _sample_info(sc, zones, truth, d_eff: float, patient: dict[str, Any], cons: dict[str, float],
                 p: dict[str, Any]) -> dict[str, Any]:
    """The realised truth of a sample (``cohort.json`` ``samples``): what a statistics check compares with."""
    from ._scene import producer_fraction

    tissue_px = max(int(sc["tissue"].sum()), 1)
    tumor = truth["cell_type"] == "Tumor"
    return {"n_cells": int(len(truth)), "n_recruited": int((truth["recruited"] != "").sum()),
            "zone_fraction": {m: round(float(z.sum() / tissue_px), 4) for m, z in zones.items()},
            "n_producers": {m: int(sc["chem"]["producer"][m].sum()) for m in MODULES},
            "stain": [round(float(s), 4) for s in sc["stain"]],
            "effective_dose_gy": round(d_eff, 4), "n_tumor": int(tumor.sum()),
            "producer_fraction": {m: round(float(truth.loc[tumor, f"{m}_pos"].mean()) if tumor.any() else 0.0, 5)
                                  for m in MODULES},
            "producer_probability": {m: round(min(1.0, producer_fraction(d_eff, p["modules"][m],
                                                                patient["emax_scale"] * cons[m],
                                                                patient["baseline_scale"])), 5) for m in MODULES},
            "n_recruited_by_module": {m: int((truth["recruited"] == m).sum()) for m in MODULES},
            "tissue_area_mm2": round(tissue_px * p["pixel_size_um"] ** 2 / 1e6, 6)}


def _write_image(path: Path, image: np.ndarray) -> None:
    """An OME-TIFF the way an acquisition program writes one: channel names and pixel size in the OME-XML."""
    import tifffile

    tifffile.imwrite(path, image, photometric="minisblack", tile=(256, 256), compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)},
                               "PhysicalSizeX": PIXEL_SIZE_UM, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": PIXEL_SIZE_UM, "PhysicalSizeYUnit": "µm"}, ome=True)


def _write_mask(path: Path, arr: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, arr, compression="zlib", photometric="minisblack")


def generate_cohort(out: str | Path, *, n_patients: int | None = None, size_px: int = 1024, seed: int = 0,
                    design: Sequence[tuple[str, float]] | None = None, progress: bool = False,
                    preset: str = "default") -> Path:
    """Write a stress cohort: images, a sample sheet and the truth, and **no config**.

    Parameters
    ----------
    out : path
        Output folder (created; files of the same names are replaced).
    n_patients : int, optional
        Patients, each imaged at every condition of ``design`` (default: the preset's, 3; ``stats`` 6).
    size_px : int
        Image side, pixels (>= 64).
    seed : int
        Master seed (same seed, same pixels).
    design : sequence of (radiation, dose_gy), optional
        Conditions per patient (default: the preset's ``design``; ``default`` is :data:`DESIGN`: sham 0 Gy,
        photon 2, 5, 10 Gy).
    progress : bool
        Print one line per sample.
    preset : str
        One of :data:`PRESETS` (``default``, ``zones``, ``stats``), recorded in ``truth/cohort.json``.

    Returns
    -------
    Path
        ``out``, holding::

            images/{sample_id}.ome.tif      uint16 OME-TIFF, 10 channels (vendor spellings), 0.4977 µm px
            samples.csv                     sample_id, image, patient, radiation, dose_gy
            truth/{sample_id}/nuclei.tif, cells.tif (uint32), tissue.tif, tumor.tif, zone_{chemokine}.tif
                              (uint8), cells.parquet
            truth/cohort.json               preset, parameters, patients' random effects, per-sample realisations

    Examples
    --------
    >>> import tempfile
    >>> d = generate_cohort(tempfile.mkdtemp(), n_patients=1, size_px=96, design=[("sham", 0.0)])
    >>> sorted(p.name for p in d.iterdir())
    ['images', 'samples.csv', 'truth']
    """
    import pandas as pd

    from ..errors import ConfigError

    p = parameters(preset)
    n_patients = int(p["n_patients"] if n_patients is None else n_patients)
    if n_patients < 1:
        raise ConfigError(f"stress n_patients must be >= 1, got {n_patients}")
    if int(size_px) < 64:
        raise ConfigError(f"stress size_px must be >= 64, got {size_px}")
    design = [(str(r), float(d)) for r, d in (design if design is not None else p["design"])]
    for radiation, dose in design:
        effective_dose(radiation, dose, p)  # refuse a bad condition before writing anything
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, info = [], {}
    for pi in range(n_patients):
        pid = f"PT{pi + 1}"
        for radiation, dose in design:
            sid = f"{pid}_{radiation}_{dose:g}Gy"
            s = generate_sample(size_px=size_px, dose_gy=dose, patient=pi, seed=seed, sample_id=sid,
                                radiation=radiation, preset=preset)
            _write_sample(out, sid, s)
            rows.append({"sample_id": sid, "image": f"images/{sid}.ome.tif", "patient": pid,
                         "radiation": radiation, "dose_gy": dose})
            info[sid] = {"patient": pid, "radiation": radiation, "dose_gy": dose, **s["info"]}
            if progress:
                print(f"{sid}: {s['info']['n_cells']} cells, zones {s['info']['zone_fraction']}", flush=True)
    pd.DataFrame(rows).to_csv(out / "samples.csv", index=False, lineterminator="\n")
    meta = {"generator": "chemozone.stress", "preset": preset, "preset_description": PRESETS[preset],
            "seed": int(seed), "size_px": int(size_px), "channels": CHANNELS, "design": design, "parameters": p,
            "patients": {f"PT{i + 1}": patient_draws(i, seed, preset) for i in range(n_patients)}, "samples": info}
    (out / "truth" / "cohort.json").write_text(json.dumps(meta, indent=1, default=str))
    return out


def _write_sample(out: Path, sid: str, s: dict[str, Any]) -> None:
    """One sample's image and truth files under ``out``."""
    _write_image(out / "images" / f"{sid}.ome.tif", s["image"])
    tdir = out / "truth" / sid
    tdir.mkdir(parents=True, exist_ok=True)
    for name in ("nuclei", "cells"):
        _write_mask(tdir / f"{name}.tif", s[name])
    for name in ("tissue", "tumor"):
        _write_mask(tdir / f"{name}.tif", s[name].astype(np.uint8))
    for m, z in s["zones"].items():
        _write_mask(tdir / f"zone_{m}.tif", z.astype(np.uint8))
    s["truth"].to_parquet(tdir / "cells.parquet", index=False)


def _parse_design(text: str) -> list[tuple[str, float]]:
    """``--doses``: comma-separated ``DOSE`` (0 = sham, else photon) or ``RADIATION:DOSE`` (e.g. ``carbon:2``).

    >>> _parse_design("0,2,carbon:5")
    [('sham', 0.0), ('photon', 2.0), ('carbon', 5.0)]
    """
    out = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        rad, _, dose = tok.rpartition(":")
        d = float(dose)
        out.append((rad or ("sham" if d == 0 else "photon"), d))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m chemozone.stress OUT [--preset default|zones|stats --patients N --size PX --seed S --doses ...]``."""
    from ..errors import ConfigError

    ap = argparse.ArgumentParser(prog="python -m chemozone.stress",
                                 description="write the stress cohort (another panel, offset, spillover, "
                                             "autofluorescence) with truth and no config")
    ap.add_argument("out")
    ap.add_argument("--preset", default="default",
                    help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()).replace("%", "%%") + " (default: default)")
    ap.add_argument("--patients", type=int, default=None, help="patients (default: the preset's, 3; stats 6)")
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doses", default=None,
                    help="comma-separated doses in Gy (0 = sham, else photon; RADIATION:DOSE such as carbon:2 for "
                         "another radiation of the preset); default: the preset's design")
    a = ap.parse_args(argv)
    try:
        check_preset(a.preset)
    except ConfigError as e:
        ap.error(f"--preset: {e}")
    try:
        design = _parse_design(a.doses) if a.doses is not None else None
    except ValueError:
        ap.error(f"--doses must be numbers (or RADIATION:DOSE) separated by commas, got '{a.doses}'")
    try:
        generate_cohort(a.out, n_patients=a.patients, size_px=a.size, seed=a.seed, design=design, progress=True,
                        preset=a.preset)
    except ConfigError as e:
        ap.error(str(e))
    print(f"stress cohort ({a.preset} preset) written to {a.out} (no config: write one from README.md and "
          "configs/example.yaml)")
    return 0
