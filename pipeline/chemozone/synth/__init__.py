"""Synthetic explant cohort with ground truth (``chemozone synth``).

Mimics patient-derived tumor explants irradiated ex vivo (sham, photon, proton, carbon at several
doses), stained with a multiplex immunofluorescence panel and imaged at 0.5 µm/px. Every image comes
with its ground truth: nuclei and cell labels, the tissue mask, one zone mask per chemokine module and a
per-cell table, plus the cohort's true parameters and a chemozone config that analyses the cohort.

Model (all parameters in ``truth/cohort.json``)
-----------------------------------------------
* **Tissue**: an irregular explant outline (smooth random field around an ellipse) whose outer
  40 µm is a damaged rim (fewer cells, shrunken bright nuclei, weaker markers); panCK+ tumor nests
  (30-40 % of the tissue, a thresholded smooth field) in stroma; optionally a tear (excluded from the
  truth tissue, no cells) and an out-of-focus patch (blurred pixels, truth unchanged).
* **Cells** on a jittered hexagonal lattice (about 4000/mm² in nests, 1500/mm² in stroma; nests have
  touching nuclei). Nuclei are irregular ellipses by type (tumor 10-16 µm, lymphocytes/NK 6-8 µm,
  elongated stromal nuclei aligned with a smooth fibre field, macrophages 9-13 µm with a wide
  cytoplasm); cell bodies grow around them (each pixel goes to the body with the smallest normalised
  radius). Types: ``Tumor, Stroma, Macrophage, CD8 T, CD4 T, NK, Other immune``.
* **Dose**: per chemokine module m (CXCL8, CXCL10, CCL5) a tumor cell is a producer with probability
  ``p_m = baseline_m + Emax_m * c_m(r) * D_eff**n / (ED50**n + D_eff**n)``, ``D_eff = e(r) * dose``
  (effectiveness ``e``: photon 1.0, proton 1.1, carbon 2.5; conservation ``c``: CXCL10 0.5 after carbon).
  The senescent (p21+) fraction follows the same law. Producers are drawn without replacement with
  weights ``exp(k * H_m(x)) * odds**senescent``: ``H_m`` are smooth random fields with pairwise
  correlation +0.5 (``territory_correlation``: each module's own field mixed with the damage field that also
  places the senescent cells), so the modules co-localise in damaged regions as radiation biology suggests
  (IFN/STING and SASP programmes); ``territory_correlation: -0.5`` gives each module its own territories (the
  design before issue 15) and 0 independent ones. The senescence link through ``odds`` is mild next to the
  patches. Patients carry random effects (ED50, Emax,
  immune density, infiltration).
* **Truth zones**: ``F_m(x) = sum_i w_i exp(-|x - x_i|² / (2 sigma²))`` over the producers i of module m
  (amount ``w_i``, mean 1), ``sigma = 12 µm``, computed on a 2 µm grid and interpolated bilinearly to
  full resolution; the zone is ``tissue & (F_m >= 0.5)`` (a lone average producer gives a disc of about
  14 µm radius). The chemokine channel carries perinuclear dots whose total intensity per producer is
  ``w_i * A * 2*pi*sigma²`` (A = the channel's amplitude), so smoothing the channel with a Gaussian of
  ~10 µm (which, with the ~8 µm ring of dots, gives an effective sigma of ~12 µm) yields
  ``background + A * F_m``: a threshold near ``background + A/2`` recovers the zone.
* **Infiltration**: resident immune cells are placed independently of the zones (uniform density over
  the tissue), with receptor flags drawn by type (NK mostly CXCR2+, CD8 T often CXCR3+/CCR5+...).
  An *exogenous* (co-cultured) pool (``exogenous`` column) of ``Poisson(density * tissue area)`` NK and
  CD8 T cells, whose size does not depend on dose, carries receptors drawn by type; each cell is placed
  with intensity ``tissue * (1 + beta * sum_m R_m F_m(x))`` where ``R_m`` = it carries module m's
  receptor (CXCR2↔CXCL8, CXCR3↔CXCL10, CCR5↔CCL5), corrected for the scarcity of gaps in dense nests.
  Receptor-negative cells are thus never drawn to a zone by its own chemokine, and their number and
  spread do not change with dose.
* **Imaging**: marker signal in its compartment (nuclear p21; membrane CD45/CD3/CD8/CD4/CD56/receptors;
  cytoplasmic panCK/CD68; chemokine dots), per-sample staining scale per channel, background and
  stromal autofluorescence (stronger in early channels), 3 % spillover between neighbouring channels,
  optical blur, Poisson–Gaussian noise, uint16.

Outputs of :func:`generate_cohort` (``OUT``)::

    images/{sample_id}.ome.tif     tiled OME-TIFF, uint16, channel names, 0.5 µm pixels
    samples.csv                    sample_id, image, patient, radiation, dose_gy, replicate
    truth/{sample_id}/nuclei.tif, cells.tif (uint32), tissue.tif, tumor.tif, zone_{m}.tif (uint8),
                      cells.parquet
    truth/cohort.json              all truth parameters, patient effects and per-sample realisations
    config.yaml                    a chemozone config that analyses the cohort (:func:`cohort_config`)

Same seed, same bytes: OME UUIDs and every random step derive from the seed.

Package layout
--------------
``_params``      panel, cell types, presets, :func:`truth_parameters`, :func:`producer_probability`,
                 :func:`patient_effects`
``_draws``       smooth random fields, the module territory factor, weighted sampling without replacement
``_tissue``      outline, tear, nests, out-of-focus patch (4 µm grid)
``_cells``       resident cell lattice, cell types, nucleus and cell-body shapes
``_dose``        senescence, chemokine producers and the truth fields ``F_m`` (2 µm grid)
``_exogenous``   receptors and the placement of the exogenous pool
``_markers``     marker truth, expression levels, channel spec and staining, chemokine dots
``_scene``       ``build_scene``: all the above, drawn in a fixed order from one generator
``_render``      ``render_region``: a scene's pixels, region by region (labels, signal, imaging, noise)
``_sample``      :func:`generate_sample` (in memory) and the per-cell truth table
``_write``       one sample's image and truth files
``_cohort``      :func:`generate_cohort`, :func:`cohort_config`
"""

from ._cohort import cohort_config, generate_cohort
from ._params import (
                      CELL_TYPES,
                      DEFAULT_CHANNELS,
                      MODULES,
                      PIXEL_SIZE_UM,
                      PRESETS,
                      patient_effects,
                      producer_probability,
                      truth_parameters,
)
from ._params import IMMUNE_TYPES as IMMUNE_TYPES  # public constants outside the star list, as before
from ._params import LARGE_CHANNELS as LARGE_CHANNELS
from ._params import RECEPTORS as RECEPTORS
from ._sample import generate_sample

__all__ = [
    "DEFAULT_CHANNELS",
    "CELL_TYPES",
    "MODULES",
    "PRESETS",
    "PIXEL_SIZE_UM",
    "truth_parameters",
    "producer_probability",
    "patient_effects",
    "generate_sample",
    "generate_cohort",
    "cohort_config",
]
