"""A second synthetic cohort, written independently of :mod:`chemozone.synth`, to test chemozone on images
it did not make (``python -m chemozone.stress OUT``).

It shares no code with :mod:`chemozone.synth` and writes **no config**: a user writes one from README.md
and ``configs/example.yaml`` (``benchmarks/configs/stress_user.yaml``), as for any new panel.

What makes it hard (all parameters in ``truth/cohort.json``, :func:`parameters`)
------------------------------------------------------------------------------
* **Another panel, vendor spellings**: ``DAPI, Pan-CK (Opal 690), CD3e (Opal 570), CD8a (Opal 480),
  CD56 (Opal 620), CD45 (Opal 520), CXCR3 (Opal 540), CCR5 (Opal 650), CXCL10 (Opal 780), CCL5 (Opal 440)``:
  the fluorophore suffixes and ``Pan-CK`` are matched by chemozone's name normalisation; ``CD3e`` and ``CD8a``
  need ``panel.aliases`` (as the README says for other spellings). Pixel size 0.4977 µm in the OME-XML.
* **Camera**: uint16 with a per-channel offset of 78-83 counts, 12-bit range (clipped at 4095), Poisson shot
  noise and Gaussian read noise, a Gaussian PSF; per-channel gains differing by 5× (DAPI 2200 counts at
  expression level 1, CCR5 480); per-patient and per-sample staining scales.
* **Spillover**: 3 % of every channel's light reaches the next channel in file order (DAPI → Pan-CK →
  CD3e → ... ): tumor cells are lifted in CD3e, immune cells in CXCR3 (from CD45).
* **Autofluorescence**: a fibrous stromal texture in every channel (plus a weak tissue-wide level and a
  nonspecific tissue background): stroma and tumor are two different negative populations.
* **Tissue**: an explant on glass with an irregular outline; tumor nests (about 42 % of the tissue, dense,
  touching nuclei) in stroma. Nuclei are ellipses of varied size and aspect by lineage (tumor 9-14 µm,
  stromal 10-16 µm × aspect 0.25-0.45, lymphocytes 5.5-7.5 µm, myeloid 7-11 µm).
* **Lineages** (truth ``cell_type``): ``Tumor`` (Pan-CK+), ``Stroma`` (no marker), ``CD8 T`` (CD45+ CD3+
  CD8+), ``CD4 T`` (CD45+ CD3+ CD8−; the panel has no CD4), ``NK`` (CD45+ CD56+ CD3−; 30 % CD8-dim),
  ``Other immune`` (CD45+ only).
* **Receptors** CXCR3 and CCR5 are dim (a positive cell's mean is about 2-4× a negative immune cell's, offset
  included) on subsets of the immune lineages (:data:`RECEPTOR_PROBABILITY`).
* **Chemokines** CXCL10 and CCL5: tumor cells become producers with probability
  ``baseline + Emax * D^2 / (ED50^2 + D^2)`` (ED50 4 Gy; ``D`` the photon-equivalent dose, below), drawn with
  weights ``exp(k * H_m(x))`` where the territories ``H_m`` share a damage field (positively correlated
  modules, co-localised zones). Producers carry cytoplasmic dots; the secreted chemokine adds a halo ``∝ F_m``,
  ``F_m(x) = sum_i w_i exp(-d_i² / (2 σ²))``, σ = 15 µm; the truth zone is ``tissue & F_m >= 0.5``.
* **Infiltration**: besides resident immune cells (uniform in stroma, few in nests), receptor+ cells
  (CXCR3+ for CXCL10, CCR5+ for CCL5) are recruited into each zone, ``Poisson(900/mm² × zone area)``: the
  receptor+ infiltration grows with dose. Cells negative for every receptor are never recruited (a recruited
  cell carries its cognate receptor; the other receptor follows its lineage's probability, so with co-localised
  zones CCL5-recruited CXCR3− cells also sit in CXCL10 zones).
* **Radiation**: ``D = effectiveness × dose_gy`` and a module's Emax is multiplied by the radiation's
  ``conservation`` (preset table ``radiation``; ``sham`` is dose 0).

Presets (``preset=`` / ``--preset``; :data:`PRESETS`, :func:`parameters` ``(preset)``)
-------------------------------------------------------------------------------------
``truth/cohort.json`` records the preset, its description and all of its parameters.

* ``default``: the cohort as first written (same seed, same pixels as before presets existed): 3 patients ×
  (sham, photon 2, 5, 10 Gy); baseline 1.0 / 0.8 % producers (CXCL10 / CCL5), Emax 0.30 / 0.22, patients'
  Emax spread lognormal SD 0.15; sham zones 0-4 % (often 0), irradiated about 4-35 %.
* ``zones`` (for zone calling): baseline 1.4 / 1.2 % producers with a per-patient factor (lognormal SD 0.35),
  Emax 0.38 / 0.32, patients' Emax spread SD 0.25; 3 patients × (sham, photon 2, 5, 10, 20 Gy). Zone fractions of
  the truth at 1024 px (30 seeds × 3 patients × 2 chemokines, 5th / 50th / 95th percentile): sham 0.1 / 1.8 /
  4.3 % (max 6.4 %; baseline producers in almost every sham), 2 Gy 5.5 / 10 / 16 %, 20 Gy 19 / 30 / 42 %
  (max 47 %); the two zone masks correlate positively (phi mostly 0.2-0.7 at 20 Gy).
* ``stats`` (for dose-response statistics): the ``zones`` biology (identical sham and photon samples for the same
  seed, patient and sample id) on 6 patients × (sham, photon 1, 2, 5, 10, 20 Gy, carbon 1, 2, 5 Gy). Carbon
  has ``effectiveness`` 2.5 (carbon 2 Gy acts as photon 5 Gy) and ``conservation`` 0.5 for CXCL10, 1.0 for CCL5:
  after carbon the CXCL10 module is half as strong, CCL5 is not. What a statistics check can compare with:
  photon ED50 4 Gy of the producer fraction (Hill n 2: 10 → 20 Gy adds ~12 % of the 0 → 10 Gy rise; zone
  area and receptor+ infiltration saturate earlier because producers are tumor cells, nests ~42 % of the
  tissue), receptor+ recruitment only, and per-sample realisations in ``cohort.json`` (effective dose, expected
  and realised producer fractions, zone fractions, recruited cells per module, tissue area).

``pixels=False`` (:func:`generate_sample`) gives the same truth without the image, about 3x faster (0.6 s
instead of 1.8 s CPU per 1024² sample on one core), for truth tables over many simulated cohorts.

Outputs of :func:`generate_cohort` (``OUT``)::

    images/{sample_id}.ome.tif      uint16 OME-TIFF written by tifffile (channel names, pixel size)
    samples.csv                     sample_id, image, patient, radiation, dose_gy
    truth/{sample_id}/nuclei.tif, cells.tif (uint32), tissue.tif, tumor.tif, zone_CXCL10.tif, zone_CCL5.tif
                      (uint8), cells.parquet (sample_id, cell_id, x_um, y_um, cell_type, areas, in_tumor,
                      recruited, {marker}_pos, {chemokine}_amount, in_{chemokine})
    truth/cohort.json               preset, parameters, patients' random effects, per-sample realisations

Same seed, same pixels. Modules: ``_panel`` (panel and biology as data), ``_scene`` (tissue, cells,
producers, truth fields, recruitment), ``_render`` (labels, compartments, camera), ``_cohort``
(:func:`generate_sample`, :func:`generate_cohort`, :func:`main`).
"""

from ._cohort import effective_dose, generate_cohort, generate_sample, main, patient_draws
from ._panel import (
    CELL_TYPES,
    CHANNELS,
    DESIGN,
    MARKERS,
    MODULES,
    PANEL,
    PIXEL_SIZE_UM,
    PRESETS,
    RECEPTOR_PROBABILITY,
    SPILLOVER,
    check_preset,
    parameters,
)

__all__ = [
    "generate_cohort",
    "generate_sample",
    "main",
    "patient_draws",
    "effective_dose",
    "parameters",
    "check_preset",
    "CELL_TYPES",
    "CHANNELS",
    "DESIGN",
    "MARKERS",
    "MODULES",
    "PANEL",
    "PIXEL_SIZE_UM",
    "PRESETS",
    "RECEPTOR_PROBABILITY",
    "SPILLOVER",
]
