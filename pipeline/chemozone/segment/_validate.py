"""Input checks shared by the segmentation functions."""

from __future__ import annotations

from typing import Any

import numpy as np


def _validate_2d(image: Any, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (Y, X), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _validate_scale(pixel_size_um: float, **lengths: float | None) -> None:
    if not (pixel_size_um and np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    for k, v in lengths.items():
        if v is not None and not (np.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be a positive number, got {v!r}")
