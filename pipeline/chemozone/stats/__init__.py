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
* ``_curves.py`` – the curve models and their one-arm fit (Gaussian or quasi-binomial; internal).
* ``_intervals.py`` – :func:`bootstrap_interval` (percentile / BCa / expanded BCa), :func:`equivalence_test`
  (TOST with power), :func:`t_interval`.
* ``_dose_response.py`` – :func:`fit_dose_response` (fits table), :func:`fit_dose_response_with_bootstrap`
  (:class:`DoseResponseFit`: fits + bootstrap draws), :func:`predict_dose_response`,
  :func:`dose_response_models`.
* ``_mixed.py`` – :func:`mixed_model` (t intervals on n_patients − 1 df).
* ``_radiation.py`` – :func:`relative_amplitude`, :func:`compare_radiation` (joint patient bootstrap).
* ``_tests.py`` – :func:`cognate_test`, :func:`dose_rate_test`, :func:`bh_fdr`.
* ``_modules.py`` – :func:`chemokine_modules`.
* ``_soft.py`` – :func:`cognate_call_bootstrap` (cognate specificity from hard calls or a classifier's
  probabilities, with Bernoulli call resampling inside the patient bootstrap), :func:`compare_cognate_calls`
  (truth vs gate vs classifier on the same cells).

Conventions
-----------
* Samples at 0 Gy are controls shared by every radiation arm (a facility sham such as ``sham_linac`` is a
  0 Gy photon, ``sham_hit`` a 0 Gy particle control); an arm is a radiation type with doses > 0.
* Dose-response models (``E0`` baseline, ``Emax`` the amplitude, so the plateau is ``E0 + Emax``)::

      linear     y = E0 + slope * D
      loglinear  y = E0 + log_slope * log(1 + D)     (concave, no plateau: the alternative to a plateau)
      emax       y = E0 + Emax * D / (ED50 + D)
      hill       y = E0 + Emax * D**h / (ED50**h + D**h)

  fitted by least squares with one additive offset per patient (a fixed patient block), so that
  between-patient differences in level do not blur the curve. AIC = n log(RSS/n) + 2k (k counts the curve
  parameters, the patient offsets and the residual variance; the offsets cancel in comparisons). A
  proportion of counted cells (``trials=``) is fitted by quasi-binomial maximum likelihood instead (QAIC).
* Infiltration metrics against zones that grow with dose: cells inside a zone per mm² of *tissue*
  (``receptor_density_table(per="tissue")``) measures the infiltration *amount* and grows with the zone
  for any population, so it is used only for attracted (cognate receptor+) cells. Whether a population
  responds to dose at all (the receptor− specificity control) is judged on metrics not confounded by zone
  size: the density inside the zone (per mm² of zone) and the log2 enrichment inside/outside, both
  estimated from counts with area offsets by :func:`dose_rate_test` (:func:`receptor_count_table`).
* Confidence intervals come from a bootstrap over patients (resampled with replacement; every arm of one
  draw uses the same resample, so ratios between arms are paired), BCa by default (jackknife-over-patients
  acceleration); failed refits are counted (``n_bootstrap_failed``) and warned about above 5 %. Mixed-model
  intervals are t on ``n_patients − 1`` df. "No effect" claims are equivalence tests with a stated margin.
  ``benchmarks/coverage_stats.py`` measures the coverage of these intervals on simulated cohorts.
"""

from __future__ import annotations

from ._dose_response import (
    DoseResponseFit,
    dose_response_models,
    fit_dose_response,
    fit_dose_response_with_bootstrap,
    predict_dose_response,
)
from ._intervals import CI_METHODS, bootstrap_interval, equivalence_test, t_interval
from ._load import TABLES, add_effective_dose, load_run
from ._mixed import mixed_model
from ._modules import chemokine_modules
from ._radiation import compare_radiation, relative_amplitude
from ._soft import cognate_call_bootstrap, compare_cognate_calls
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
from ._tests import bh_fdr, cognate_test, dose_rate_test

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
    "bootstrap_interval",
    "equivalence_test",
    "t_interval",
    "CI_METHODS",
    "cognate_call_bootstrap",
    "compare_cognate_calls",
]
