"""Cohort statistics on a run folder's tables: dose-response, mixed models, cognate specificity, modules.

Every function is pure: tables in, tables out (pandas). The usual flow::

    run = load_run("chemozone-demo/run")
    areas = zone_area_table(run)                       # one row per sample, area_fraction_{zone}
    fits = fit_dose_response(areas, metric="area_fraction_CXCL8")
    mm = mixed_model(areas, metric="area_fraction_CXCL8")
    cog = cognate_test(run["infiltration"], pairs=[("CXCL8", "CXCR2", ["NK"])])
    mods = chemokine_modules(run["cells"], markers=["CXCL8", "CXCL10", "CCL20"])

Layout (everything is re-exported here: import from ``chemozone.stats``)
-------------------------------------------------------------------------
* ``_load.py`` – :func:`load_run`, :data:`TABLES`, :func:`add_effective_dose`.
* ``_tables.py`` – per-sample metric tables: :func:`metric_table` (:func:`zone_area_table`,
  :func:`density_table`, :func:`enrichment_table`, :func:`producer_fraction_table`,
  :func:`receptor_density_table`), receptor counts (:func:`receptor_count_table`,
  :func:`receptor_overlap_counts`) and :func:`split_phenotype`.
* ``_dose_response.py`` – :func:`fit_dose_response` (fits table), :func:`fit_dose_response_with_bootstrap`
  (:class:`DoseResponseFit`: fits + bootstrap draws), :func:`predict_dose_response`,
  :func:`relative_amplitude`, :func:`dose_response_models`.
* ``_tests.py`` – :func:`mixed_model`, :func:`compare_radiation`, :func:`cognate_test`,
  :func:`dose_rate_test`, :func:`bh_fdr`.
* ``_modules.py`` – :func:`chemokine_modules`.

Conventions
-----------
* Samples at 0 Gy are controls shared by every radiation arm (a facility sham such as ``sham_linac`` is a
  0 Gy photon, ``sham_hit`` a 0 Gy particle control); an arm is a radiation type with doses > 0.
* Dose-response models (``E0`` baseline, ``Emax`` the amplitude, so the plateau is ``E0 + Emax``)::

      linear  y = E0 + slope * D
      emax    y = E0 + Emax * D / (ED50 + D)
      hill    y = E0 + Emax * D**h / (ED50**h + D**h)

  fitted by least squares with one additive offset per patient (a fixed patient block), so that
  between-patient differences in level do not blur the curve. AIC = n log(RSS/n) + 2k (k counts the curve
  parameters, the patient offsets and the residual variance; the offsets cancel in comparisons).
* Infiltration metrics against zones that grow with dose: cells inside a zone per mm² of *tissue*
  (``receptor_density_table(per="tissue")``) measures the infiltration *amount* and grows with the zone
  for any population, so it is used only for attracted (cognate receptor+) cells. Whether a population
  responds to dose at all (the receptor− specificity control) is judged on metrics not confounded by zone
  size: the density inside the zone (per mm² of zone) and the log2 enrichment inside/outside, both
  estimated from counts with area offsets by :func:`dose_rate_test` (:func:`receptor_count_table`).
* Confidence intervals come from a bootstrap over patients (resampled with replacement; every arm of one
  draw uses the same resample, so ratios between arms are paired).
"""

from __future__ import annotations

from ._dose_response import (
    DoseResponseFit,
    dose_response_models,
    fit_dose_response,
    fit_dose_response_with_bootstrap,
    predict_dose_response,
    relative_amplitude,
)
from ._load import TABLES, add_effective_dose, load_run
from ._modules import chemokine_modules
from ._tables import (
    density_table,
    enrichment_table,
    metric_table,
    producer_fraction_table,
    receptor_count_table,
    receptor_density_table,
    receptor_overlap_counts,
    split_phenotype,
    zone_area_table,
)
from ._tests import bh_fdr, cognate_test, compare_radiation, dose_rate_test, mixed_model

__all__ = [
    "TABLES",
    "load_run",
    "add_effective_dose",
    "zone_area_table",
    "density_table",
    "enrichment_table",
    "producer_fraction_table",
    "metric_table",
    "dose_response_models",
    "fit_dose_response",
    "fit_dose_response_with_bootstrap",
    "DoseResponseFit",
    "predict_dose_response",
    "relative_amplitude",
    "mixed_model",
    "compare_radiation",
    "cognate_test",
    "chemokine_modules",
    "bh_fdr",
    "split_phenotype",
    "receptor_density_table",
    "receptor_count_table",
    "receptor_overlap_counts",
    "dose_rate_test",
]
