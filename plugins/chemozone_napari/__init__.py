"""napari plugin for chemozone (npe2). Holds no science: widgets call chemozone functions.

Contributions (see ``napari.yaml``): a reader for images, sample folders and run folders; five dock
widgets (analyse, gate review, zone review, cell inspector, infiltration); a synthetic sample.
"""

__all__ = ["napari_get_reader"]


def napari_get_reader(path):
    """Reader hook (see :func:`chemozone_napari._reader.napari_get_reader`)."""
    from ._reader import napari_get_reader as _get

    return _get(path)
