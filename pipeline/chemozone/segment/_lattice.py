"""The image-level sampling lattice: statistics of a whole image from at most ~4 Mpx.

The lattice is global (pixels ``y % s == 0 and x % s == 0`` of the whole image), so tiles that each
sample their own core gather together exactly the values a whole-image pass would.
"""

from __future__ import annotations

import math

import numpy as np

_STAT_PIXELS = 4_000_000  # image-level statistics come from a lattice of at most ~this many pixels


def _lattice_step(shape: tuple[int, ...]) -> int:
    """Stride of the image-level sampling lattice (pixels ``y % s == 0 and x % s == 0``)."""
    n = int(shape[-2]) * int(shape[-1])
    return max(1, int(math.ceil(math.sqrt(n / _STAT_PIXELS))))


def _lattice(arr: np.ndarray, origin: tuple[int, int], region: tuple[int, int, int, int], step: int) -> np.ndarray:
    """Values of ``arr`` (a window starting at global ``origin``) on the global lattice inside
    ``region`` = (y0, y1, x0, x1) in global coordinates."""
    y0, y1, x0, x1 = region
    oy, ox = origin
    gy0, gx0 = -(-y0 // step) * step, -(-x0 // step) * step
    return arr[..., gy0 - oy : y1 - oy : step, gx0 - ox : x1 - ox : step]


def _merge_samples(parts: list[dict]) -> dict:
    """Concatenate the lattice samples of several tiles, key by key."""
    keys = parts[0].keys() if parts else ("smooth", "blob")
    return {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.float32) for k in keys}


def _robust_ranges(values_c_n: np.ndarray) -> np.ndarray:
    """``(low, high)`` = (1st, 99th percentile) of each row of finite values; ``high > low`` always."""
    out = np.zeros((values_c_n.shape[0], 2))
    for c, v in enumerate(values_c_n):
        v = v[np.isfinite(v)]
        lo, hi = (np.percentile(v, [1, 99]) if v.size else (0.0, 1.0))
        if not hi > lo:
            hi = lo + 1.0
        out[c] = lo, hi
    return out
