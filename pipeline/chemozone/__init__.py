"""chemozone: chemokine-zone infiltration analysis of multiplex immunofluorescence images.

The library never imports napari, Qt, magicgui, torch or cellpose at import time. ``chemozone.__version__``
is looked up on first use (reading the installed metadata costs more than importing the package).
"""

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("chemozone")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'chemozone' has no attribute {name!r}")
