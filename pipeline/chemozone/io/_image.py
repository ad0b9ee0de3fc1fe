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
    pixel_size_origin : str
        Where in the file a reader found the pixel size (e.g. ``TIFF resolution tag (72 pixels per inch)``);
        empty when it found none.
    pixel_size_source : str
        ``file`` or ``config`` (``panel.pixel_size_um``), set by :func:`~chemozone.io.read_image`.
    pixel_size_note : str
        Why the config's value was used, or that the config disagrees with the file's value; empty otherwise.
    """

    data: Any
    channels: list[str]
    pixel_size_um: float
    path: Path
    levels: list[Any] = field(default_factory=list)
    format: str = "tiff"
    pixel_size_origin: str = ""
    pixel_size_source: str = "file"
    pixel_size_note: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def channel(self, name: str, *, aliases: dict[str, list[str]] | None = None):
        """The ``(Y, X)`` dask array of one channel (matched like :func:`resolve_channels`)."""
        (idx,) = resolve_channels(self.channels, [name], aliases=aliases, source=self.path)
        return self.data[idx]

