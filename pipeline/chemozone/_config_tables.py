"""The ``cell_tables`` config section (runs on other tools' cell tables, :mod:`chemozone.table_run`); part of
:mod:`chemozone.config`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat

from ._config_base import _Section

__all__ = ["CellTablesConfig"]


class CellTablesConfig(_Section):
    """Runs on other tools' cell tables without images (``chemozone run TABLE --cells FORMAT``)."""

    format: Literal["auto", "inform", "halo", "qupath", "mcmicro", "scimap", "cellprofiler", "codex"] = "auto"
    """Export format (auto = recognised by its position columns)."""
    unit: Literal["auto", "um", "px"] = "auto"
    """Unit of the positions (auto = from the headers or the format); pixels need ``panel.pixel_size_um``."""
    sample_column: str | None = None
    """Column naming each cell's sample (None = the format's image column, else the file name)."""
    region_radius_um: PositiveFloat | None = None
    """Tissue from cell positions: disc of this radius around every cell (None = half the median distance from a
    cell to its nearest neighbour in the sample)."""
    region_close_um: float = Field(50.0, ge=0)
    """Tissue from cell positions: gaps between discs narrower than twice this are bridged (morphological closing)."""
