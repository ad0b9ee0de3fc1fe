"""The base of every config section (unknown keys refused, assignments validated); part of :mod:`chemozone.config`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["_Section"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
