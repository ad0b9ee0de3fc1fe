"""Compiled kernels: numba on first use (cached on disk), or None when numba is missing or disabled.

Kernels are plain module-level functions; a module asks :func:`compiled` for them when it first needs them, so
importing chemozone never imports numba. ``CHEMOZONE_NO_NUMBA=1`` (read at every call) makes every caller take its
numpy or scipy path, which gives the same values.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["compiled", "numba_disabled"]

_BUILT: dict[str, Any] = {}


def numba_disabled() -> bool:
    """True when ``CHEMOZONE_NO_NUMBA`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get("CHEMOZONE_NO_NUMBA", "") not in ("", "0")


def compiled(key: str, build: Callable[[Callable], Any]) -> Any:
    """``build(jit)`` with ``jit = numba.njit(cache=True, nogil=True)``, made once per process and ``key``; None when
    numba is disabled or not installed.

    Examples
    --------
    >>> compiled("doctest", lambda jit: "kernels") in ("kernels", None)
    True
    """
    if numba_disabled():
        return None
    if key not in _BUILT:
        try:
            import numba  # noqa: PLC0415
        except ImportError:  # pragma: no cover - numba is a dependency
            _BUILT[key] = None
        else:
            _BUILT[key] = build(numba.njit(cache=True, nogil=True))
    return _BUILT[key]
