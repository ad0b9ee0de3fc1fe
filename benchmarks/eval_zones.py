"""End-to-end check of zones and cognate infiltration against the synthetic truth.

Runs on a finished run folder of a synthetic cohort (``chemozone synth`` + ``chemozone run``, or
``chemozone demo``): for every irradiated sample, the IoU of each pipeline zone mask with the truth zone
(truth downsampled to the analysis grid by block majority), the zone area fraction vs the truth's, and
the direction of cognate enrichment (receptor+ and receptor− cells of each lineage, from the pipeline's
own segmentation and phenotypes) vs the same quantity computed from the truth cells and truth zones.

    python benchmarks/eval_zones.py COHORT RUN
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from chemozone.config import load_config
from chemozone.grid import block_mean, grid_factor
from chemozone.io import labels_pixel_size_um, read_labels_zarr
from chemozone.layout import RunLayout


def _log2_enrichment(df: pd.DataFrame, col: str, a_in: float, a_out: float) -> float:
    n_in, n_out = df[col].sum(), (~df[col]).sum()
    tot = a_in + a_out
    return float(np.log2(((n_in + a_in / tot) / a_in) / ((n_out + a_out / tot) / a_out)))


def main(cohort: Path, run: Path) -> pd.DataFrame:
    lay = RunLayout(run)
    cfg = load_config(cohort / "config.yaml")
    samples = pd.read_csv(cohort / "samples.csv")
    px = cfg.panel.pixel_size_um or 0.5
    rows = []
    for s in samples.itertuples():
        if s.dose_gy == 0:
            continue
        tdir = cohort / "truth" / s.sample_id
        grid_um = labels_pixel_size_um(lay.masks(s.sample_id), "tissue")
        factor = grid_factor(px, grid_um)
        tissue = read_labels_zarr(lay.masks(s.sample_id), "tissue").astype(bool)
        truth_cells = pd.read_parquet(tdir / "cells.parquet")
        cells = pd.read_parquet(lay.cells(s.sample_id))
        for pair in cfg.spatial.cognate_pairs:
            z = pair.zone
            pred = read_labels_zarr(lay.masks(s.sample_id), f"zone_{z}").astype(bool)
            truth = block_mean(tifffile.imread(tdir / f"zone_{z}.tif") > 0, factor) >= 0.5  # majority of the block
            inter, union = (pred & truth).sum(), (pred | truth).sum()
            iou = inter / union if union else 1.0
            a_in_p = (pred & tissue).sum() * grid_um**2
            a_out_p = (~pred & tissue).sum() * grid_um**2
            t_tissue = block_mean(tifffile.imread(tdir / "tissue.tif") > 0, factor) >= 0.5
            a_in_t = (truth & t_tissue).sum() * grid_um**2
            a_out_t = (~truth & t_tissue).sum() * grid_um**2
            row = {"sample_id": s.sample_id, "radiation": s.radiation, "dose_gy": s.dose_gy, "zone": z, "iou": iou,
                   "area_fraction": a_in_p / (a_in_p + a_out_p), "truth_area_fraction": a_in_t / (a_in_t + a_out_t)}
            spec_p, spec_t = [], []
            for lin in pair.cell_types:
                pc = cells[cells["cell_type"] == lin]
                tc = truth_cells[truth_cells["cell_type"] == lin]
                rcol = f"{pair.receptor}_pos"
                for sign, sel_p, sel_t in (("pos", pc[rcol], tc[rcol]), ("neg", ~pc[rcol], ~tc[rcol])):
                    row[f"{lin}_{sign}_pipeline"] = _log2_enrichment(pc[sel_p], f"in_{z}", a_in_p, a_out_p)
                    row[f"{lin}_{sign}_truth"] = _log2_enrichment(tc[sel_t], f"in_{z}", a_in_t, a_out_t)
                spec_p.append(row[f"{lin}_pos_pipeline"] - row[f"{lin}_neg_pipeline"])
                spec_t.append(row[f"{lin}_pos_truth"] - row[f"{lin}_neg_truth"])
            row["specificity_pipeline"] = float(np.mean(spec_p))
            row["specificity_truth"] = float(np.mean(spec_t))
            row["same_direction"] = bool(np.sign(row["specificity_pipeline"]) == np.sign(row["specificity_truth"]))
            rows.append(row)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df[["sample_id", "zone", "iou", "area_fraction", "truth_area_fraction", "specificity_pipeline",
              "specificity_truth", "same_direction"]].round(3).to_string(index=False))
    print(f"\nIoU: median {df['iou'].median():.3f}, min {df['iou'].min():.3f}, "
          f"fraction >= 0.8: {(df['iou'] >= 0.8).mean():.2f}")
    print(f"cognate receptor+ more enriched than receptor- (pipeline): {(df['specificity_pipeline'] > 0).mean():.2f} "
          f"of sample x zone; same direction as truth: {df['same_direction'].mean():.2f}")
    return df


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
