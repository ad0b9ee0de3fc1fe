"""Errors a user can fix.

Every error a user can act on (config, files, panel, sample sheet) is a :class:`ChemozoneError`
subclass whose message names the file, key or channel, what was found and what to do. The CLI prints
it as one line without a traceback and exits 1.
"""

__all__ = [
    "ChemozoneError",
    "ConfigError",
    "ImageError",
    "MaskError",
    "RegionError",
    "TableError",
    "ChannelError",
    "SampleSheetError",
    "MissingDependencyError",
    "MissingStepError",
    "RunError",
    "ClassifierError",
    "require_columns",
]


class ChemozoneError(Exception):
    """Base class of user-fixable errors (printed as one line by the CLI, exit code 1)."""

    def __str__(self) -> str:  # one line, always
        return " ".join(Exception.__str__(self).split())


class ConfigError(ChemozoneError, ValueError):
    """Invalid configuration: the message names the YAML path, e.g. ``zones[1].smooth_um``."""


class ImageError(ChemozoneError, ValueError):
    """An image file that cannot be read, or lacks metadata we need (pixel size)."""


class MaskError(ImageError):
    """A precomputed label mask named in the sample sheet that cannot be used (names the file and the column)."""


class RegionError(ChemozoneError, ValueError):
    """A region-annotation GeoJSON named in the sample sheet that cannot be used (names the file and the column)."""


class TableError(ChemozoneError, ValueError):
    """A cell table (inForm, HALO, QuPath, MCMICRO, CellProfiler, CODEX export) that cannot be imported: the message
    names the file, the column and what to do."""


class ChannelError(ChemozoneError, KeyError):
    """A configured channel that the image lacks; the message lists the image's channels."""

    def __str__(self) -> str:  # KeyError would add quotes
        return ChemozoneError.__str__(self)


class SampleSheetError(ChemozoneError, ValueError):
    """A bad sample sheet or file-name pattern: the message names the row or file."""


class MissingDependencyError(ChemozoneError, ImportError):
    """An optional dependency is missing: the message names the extra to install."""


class MissingStepError(ChemozoneError, ValueError):
    """A function got a table that lacks the output of an earlier step (names the step to run)."""


class RunError(ChemozoneError, RuntimeError):
    """A problem with a run folder (missing, locked, or from an incompatible run)."""


class ClassifierError(ChemozoneError, ValueError):
    """Cell labels or a classifier file that cannot be used (names the file, the class or the missing channels)."""


def require_columns(df, cols, what: str, step: str) -> None:
    """Raise :class:`MissingStepError` naming the columns ``df`` lacks and the step that makes them.

    >>> import pandas as pd
    >>> require_columns(pd.DataFrame({"a": [1]}), ["a"], "cells table", "quantify")
    """
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MissingStepError(f"{what} lacks column(s) {missing}; run {step} first")
