"""The lazily read multichannel image every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._channels import resolve_channels


@dataclass
class ImageData:
    """A lazily read multichannel image.

    Attributes
    ----------
    data : dask.array.Array, shape (C, Y, X)
        Full-resolution pixels, in the file's dtype (never rescaled).
    channels : list of str
        One name per channel.
    pixel_size_um : float
        Physical pixel size in µm.
    path : Path
    levels : list of dask.array.Array
        Pyramid levels (``levels[0] is data``); one element when the file has no pyramid.
    format : str
        ``ome-tiff``, ``qptiff``, ``inform-tiff``, ``tiff``, ``ome-zarr`` or ``channel-folder``.
    """

    data: Any
    channels: list[str]
    pixel_size_um: float
    path: Path
    levels: list[Any] = field(default_factory=list)
    format: str = "tiff"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def channel(self, name: str, *, aliases: dict[str, list[str]] | None = None):
        """The ``(Y, X)`` dask array of one channel (matched like :func:`resolve_channels`)."""
        (idx,) = resolve_channels(self.channels, [name], aliases=aliases, source=self.path)
        return self.data[idx]

