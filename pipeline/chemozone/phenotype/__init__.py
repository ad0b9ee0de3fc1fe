"""Phenotyping: per-marker gates, an ordered rule table, and receptor flags.

Pure functions on per-cell DataFrames (one row per cell, columns ``sample_id``, ``cell_id`` and
``{marker}_{compartment}`` mean intensities from :func:`chemozone.quantify.quantify_cells`).

Pipeline (``p = cfg.phenotypes``; :mod:`chemozone.run` turns the config section into these keywords)::

    gates = compute_gates(cells, samples, markers=p.markers, gates_file=p.gates_file)  # one row per (sample, marker)
    cells = phenotype_cells(cells, gates, markers=p.markers, rules=p.rules, receptors=p.receptors,
                            receptor_cell_types=p.receptor_cell_types, default_cell_type=p.default_cell_type)
    # + {marker}_pos, cell_type, phenotype

Modules: ``_transform`` (gating scale), ``_thresholds`` (1-D automatic thresholds), ``_gates`` (gates per
sample and marker, :func:`resolve_gate`, gates files, ``{marker}_pos``), ``_rules`` (rule table, receptor
flags, checks), ``_plot`` (QC figure).

Conventions
-----------
- **Transform.** Each marker is gated on ``arcsinh(x / c)`` (default), ``log1p(max(x, 0) / c)`` or the raw
  value ``x``. The cofactor ``c`` is in intensity units; when the config leaves it unset it is derived from the
  data (:func:`default_cofactor`: the 5th percentile of the marker's positive values, pooled over all cells
  passed to :func:`compute_gates`), so the transformed values, and therefore every automatic gate, are the
  same whether the image is uint8, uint16 or float in any unit (multiplying the intensities by ``k``
  multiplies ``c`` and the raw thresholds by ``k``). One cofactor per marker for the whole table, so that
  thresholds of different samples are comparable.
- **Thresholds.** The gates table holds ``threshold`` (transformed scale, the scale of the QC figure) and
  ``threshold_raw`` (measured intensity units). A cell is positive when its measured value is
  ``> threshold_raw``; NaN values are negative. Manual values (``gate.value``) and gates files are in
  measured intensity units, so a reviewed gate replays exactly whatever the cofactor of a later run.
- **Methods.** ``manual``; per sample ``gmm`` (Gaussian mixture of 2 to ``gate.max_components``
  components chosen by BIC, split into negative and positive groups by ``gate.gmm_split`` and gated in the
  histogram valley between them or where their posteriors cross, ``gate.gmm_threshold``; see
  :func:`threshold_gmm`; ``gate.fallback`` with a warning when not bimodal), ``otsu``, ``valley``,
  ``multiotsu`` (top class of a 3-class Otsu); ``pooled`` (``gate.pooled_method`` over all samples pooled,
  every sample
  contributing at most ``max_cells_per_sample`` random cells, one gate for all); ``reference`` (the
  ``gate.quantile`` of the reference samples, e.g. sham / 0 Gy, of the same ``group_by`` value; all
  reference samples with a warning when a group has none). A gates file then overrides (method ``file``);
  which gate wins for a sample is :func:`resolve_gate` (reviewed gate of the sample, reviewed ``'*'``,
  computed gate of the sample, computed ``'*'``), the one rule napari's gate review uses too.
- **Cell types.** Rules are tried in order; the first whose markers are all ``pos`` positive, no ``neg``
  positive and at least one ``any`` positive names the cell type; ``default_cell_type`` (``Other``) when none
  matches.
- **Phenotype.** ``phenotype`` is the cell type followed by ``" {receptor}+"`` for each configured receptor
  (in config order) that the cell carries, e.g. ``"CD8 T CXCR3+ CCR5+"``; a receptor-negative cell keeps the
  bare cell type (``"NK"``), so ``"NK CXCR2+"`` vs ``"NK"`` compares receptor-positive with
  receptor-negative NK cells when CXCR2 is the only receptor. Flags are added only for
  ``receptor_cell_types`` (None = every cell type except the default and those whose name starts with
  "tumor" or "stroma", case-insensitive). The per-cell ``{receptor}_pos`` booleans are always present.
"""

from __future__ import annotations

from ._gates import (
    GATE_COLUMNS,
    apply_gates,
    compute_gates,
    gates_from_file,
    gates_to_file,
    is_positive,
    marker_column,
    resolve_gate,
)
from ._plot import plot_gates
from ._rules import assign_cell_types, phenotype_cells, validate_phenotypes
from ._thresholds import threshold_gmm, threshold_multiotsu, threshold_otsu, threshold_valley
from ._transform import default_cofactor, inverse_transform, transform_values

__all__ = [
    "validate_phenotypes",
    "default_cofactor",
    "transform_values",
    "inverse_transform",
    "threshold_gmm",
    "threshold_otsu",
    "threshold_multiotsu",
    "threshold_valley",
    "compute_gates",
    "resolve_gate",
    "apply_gates",
    "is_positive",
    "assign_cell_types",
    "phenotype_cells",
    "gates_to_file",
    "gates_from_file",
    "plot_gates",
    "marker_column",
    "GATE_COLUMNS",
]
