"""napari plugin for chemozone (npe2). Holds no science and no file names: widgets call chemozone functions
and find the files of a run through :class:`chemozone.layout.RunLayout` / :class:`chemozone.layout.SampleLayout`.

Contributions (declared in ``napari.yaml``):

- reader (``_reader``): images, sample folders and run folders;
- sample data (``_sample_data``): a synthetic irradiated explant (:func:`chemozone.synth.generate_sample`);
- seven dock widgets, one module each: ``_analyse_widget`` (analyse an image), ``_gate_widget`` (gate review),
  ``_zone_widget`` (zone review), ``_inspector_widget`` (cell inspector), ``_infiltration_widget``
  (infiltration panel), ``_regions_widget`` (import / save region annotations as QuPath GeoJSON),
  ``_classifier_widget`` (label cells, train a cell classifier, suggestions, save it for batch replay).

Shared helpers: ``_layers`` (layer metadata, recolouring; no Qt), ``_qt`` (small Qt helpers), ``_colors``
(display colours), ``_review`` (the files a review writes; no Qt), ``_analyse`` (the analysis generator; no Qt),
``_regions`` (region GeoJSON ↔ Shapes layers; no Qt), ``_classifier`` (the classifier widget's run, labels and
classifiers; no Qt).
"""

__all__ = ["napari_get_reader"]


def napari_get_reader(path):
    """Reader hook (see :func:`chemozone_napari._reader.napari_get_reader`)."""
    from ._reader import napari_get_reader as _get

    return _get(path)
