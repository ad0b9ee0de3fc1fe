"""The zone channels' block means on the analysis grid, kept from the tissue pass so the zone pass reads no pixels.

The tissue step (:func:`chemozone.tissue.tissue_mask`) computes every channel's block means on the analysis grid
anyway; the zone pass (:func:`chemozone.run.zone_summaries`) needs exactly those of its zones' channels
(:func:`chemozone.zones.zone_signal` with ``grid_means=``). A :class:`GridMeansWriter`, passed as (part of) the
tissue step's ``channel_means_callback``, keeps the chosen channels as float32 arrays in
``samples/<id>/.grid_means.zarr`` (the float64 means cast to float32: the same values :func:`chemozone.grid.block_mean`
returns with ``dtype=float32``, so a zone signal from them equals one from the image bit for bit).
:func:`read_grid_means` returns those that match the image (shape, grid factor, channel name); a zone whose channels
are not all there reads the image as before. On a 40k² section each zone channel is ~12 GB of pixels to decompress
again against 0.4 GB of float32 grid.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["GridMeansWriter", "read_grid_means", "tee"]

_CHUNK_PX = 2048


class GridMeansWriter:
    """Keeps the block means of the chosen channels, as the tissue step produces them (see the module docstring).

    Parameters
    ----------
    path : path
        The store to write (``SampleLayout.grid_means``; replaced atomically by :meth:`finish`).
    channels : dict of int to str
        Image channel index -> channel name of the channels to keep (others are ignored).
    shape_yx : (int, int)
        The full-resolution image's shape.
    grid_factor : int
        Image pixels per grid pixel.

    Examples
    --------
    >>> import tempfile
    >>> from chemozone.grid import block_mean
    >>> img = np.arange(2 * 6 * 6, dtype=np.uint16).reshape(2, 6, 6)
    >>> d = tempfile.mkdtemp()
    >>> w = GridMeansWriter(d + "/g.zarr", channels={1: "CXCL10"}, shape_yx=(6, 6), grid_factor=4)
    >>> for i in range(2):
    ...     w(i, block_mean(img, 4, channel_indices=[i])[0])
    >>> _ = w.finish()
    >>> kept = read_grid_means(d + "/g.zarr", channels=["DAPI", "CXCL10"], shape_yx=(6, 6), grid_factor=4)
    >>> sorted(kept), bool((kept[1][...] == block_mean(img[1], 4, dtype=np.float32)).all())
    ([1], True)
    """

    def __init__(self, path: str | Path, *, channels: dict[int, str], shape_yx: Sequence[int], grid_factor: int):
        from .grid import grid_shape
        from .layout import atomic_path

        self.path = Path(path)
        self.channels = {int(i): str(n) for i, n in channels.items()}
        self.shape_yx = tuple(int(s) for s in shape_yx)
        self.f = int(grid_factor)
        self.grid_shape = grid_shape(self.shape_yx, self.f)
        self._publish = ExitStack()  # written beside, renamed into place by finish(), removed by abort()
        self._tmp = self._publish.enter_context(atomic_path(self.path))
        self.done: list[int] = []

    def __call__(self, channel: int, grid_means: np.ndarray) -> None:
        import zarr

        from .io._zarr import scratch_array_kwargs

        if int(channel) not in self.channels:
            return
        if tuple(grid_means.shape) != self.grid_shape:
            raise ValueError(f"grid means: channel {channel} has shape {grid_means.shape}, expected {self.grid_shape}")
        root = zarr.open_group(str(self._tmp), mode="a")
        chunks = tuple(max(1, min(_CHUNK_PX, n)) for n in self.grid_shape)
        arr = root.create_array(str(int(channel)), shape=self.grid_shape, chunks=chunks, dtype=np.float32,
                                overwrite=True, **scratch_array_kwargs())
        for r0 in range(0, self.grid_shape[0], _CHUNK_PX):  # a band at a time: no grid-sized float32 copy
            arr[r0:r0 + _CHUNK_PX] = grid_means[r0:r0 + _CHUNK_PX].astype(np.float32)
        arr.attrs.update({"channel": self.channels[int(channel)], "grid_factor": self.f,
                          "shape_yx": list(self.shape_yx)})
        self.done.append(int(channel))

    def finish(self) -> Path | None:
        """Move the store into place (None, and nothing kept, when no chosen channel was given)."""
        if not self.done:
            self.abort()
            return None
        self._publish.close()
        return self.path

    def abort(self) -> None:
        """Remove the partial write (a previous store, if any, stays)."""
        err = RuntimeError("grid means aborted")
        try:
            self._publish.__exit__(type(err), err, None)
        except RuntimeError:
            pass


def read_grid_means(path: str | Path, *, channels: Sequence[str], shape_yx: Sequence[int], grid_factor: int
                    ) -> dict[int, Any]:
    """The kept grid means that belong to this image: ``{channel index: lazy zarr array}``; a channel kept for
    another image (shape, grid factor or name differ) or not kept is left out. Empty when there is no store."""
    path = Path(path)
    if not path.is_dir():
        return {}
    import zarr

    grp = zarr.open_group(str(path), mode="r")
    out = {}
    for key in grp.array_keys():
        arr = grp[key]
        a = dict(arr.attrs)
        i = int(key)
        if (i < len(channels) and a.get("channel") == str(channels[i]) and a.get("grid_factor") == int(grid_factor)
                and a.get("shape_yx") == [int(s) for s in shape_yx]):
            out[i] = arr
    return out


def tee(*callbacks):
    """One ``channel_means_callback`` that calls each non-None callback in turn (None when there is none)."""
    cbs = [c for c in callbacks if c is not None]
    if not cbs:
        return None

    def call(channel: int, grid_means: np.ndarray) -> None:
        for c in cbs:
            c(channel, grid_means)

    return call
