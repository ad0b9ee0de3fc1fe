"""chemozone: chemokine-zone infiltration analysis of multiplex immunofluorescence images.

The library never imports napari, Qt, magicgui, torch or cellpose at import time.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("chemozone")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
