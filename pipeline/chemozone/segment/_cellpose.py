"""The cellpose adapter: the only module that touches cellpose (and, through it, torch).

Imported lazily by :func:`chemozone.segment.segment_nuclei` when ``method="cellpose"``; it imports
cellpose (and torch) itself only when a model is loaded or a model name resolved.

* The model comes from ``cellpose_model`` (config ``segmentation.cellpose.model``): a path to a
  checkpoint file, or a built-in name (``cpsam``, ``cpsam_v2``, ...) that cellpose resolves to
  ``$CELLPOSE_LOCAL_MODELS_PATH/<name>`` (default ``~/.cellpose/models/<name>``). cellpose would
  *download* a missing built-in model (and silently substitute its default for an unknown name);
  chemozone never downloads at run time, so a missing file is an error that says where to put it.
* Any object with the CellposeModel ``eval`` contract (``masks, flows, styles = model.eval(img,
  diameter=..., ...)``) can be injected (``model=``), which is how tests run without weights.
* Options are plain keywords named like the ``run.json`` fields: ``cellpose_model``, ``cellpose_gpu``,
  ``cellpose_diameter_um``, ``cellpose_flow_threshold``, ``cellpose_cellprob_threshold``,
  ``cellpose_batch_size`` (defaults = those of ``segmentation.cellpose`` in the config).
* :func:`cellpose_provenance` records the cellpose version and the model for ``run.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, MissingDependencyError

__all__ = ["load_cellpose_model", "cellpose_nuclei", "cellpose_provenance", "resolve_model_path"]

_INSTALL = "pip install 'chemozone[cellpose]'"
_CACHE: dict[tuple[str, bool], Any] = {}


def _cellpose_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("cellpose")
    except metadata.PackageNotFoundError:
        return None


def _import_models():
    try:
        from cellpose import models  # noqa: PLC0415 - lazy on purpose (pulls in torch)
    except ImportError as exc:
        raise MissingDependencyError(
            f"segmentation.method 'cellpose' needs the cellpose package ({exc.__class__.__name__}: {exc}); "
            f"install it with {_INSTALL} or use segmentation.method: watershed"
        ) from None
    return models


def _model_dir() -> Path:
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def resolve_model_path(model: str) -> Path:
    """The local checkpoint file for ``segmentation.cellpose.model`` (a path or a built-in name).

    Raises
    ------
    MissingDependencyError
        If a built-in model's weights are not on disk (chemozone never downloads them).
    ConfigError
        If ``model`` is neither an existing file nor a known model name.
    """
    p = Path(model).expanduser()
    if p.is_file():
        return p.resolve()
    looks_like_path = os.sep in str(model) or str(model).endswith((".pth", ".pt", ".ckpt")) or p.suffix != ""
    models = _import_models()
    known = list(getattr(models, "MODEL_NAMES", []))
    try:
        known += list(models.get_user_models())
    except Exception:  # noqa: BLE001 - user model list is optional
        pass
    model_dir = Path(getattr(models, "MODEL_DIR", _model_dir()))
    if str(model) in known and not looks_like_path:
        cached = model_dir / str(model)
        if cached.is_file():
            return cached
        raise MissingDependencyError(
            f"segmentation.cellpose.model: weights of cellpose model '{model}' are not on this machine "
            f"(looked for {cached}); chemozone does not download at run time: download them once (e.g. "
            f"python -c \"from cellpose import models; models.CellposeModel(pretrained_model='{model}')\") or set "
            f"segmentation.cellpose.model to a local checkpoint file"
        )
    raise ConfigError(
        f"segmentation.cellpose.model: '{model}' is neither an existing file nor a cellpose model name "
        f"(known: {sorted(set(known))}); give a path to a checkpoint or one of those names"
    )


def load_cellpose_model(cellpose_model: str = "cpsam", *, cellpose_gpu: bool = False):
    """Load (once per process) the CellposeModel ``cellpose_model`` (a checkpoint path or a built-in name)."""
    path = resolve_model_path(cellpose_model)
    key = (str(path), bool(cellpose_gpu))
    if key not in _CACHE:
        models = _import_models()
        _CACHE[key] = models.CellposeModel(pretrained_model=str(path), gpu=bool(cellpose_gpu))
    return _CACHE[key]


def cellpose_nuclei(image_yx: np.ndarray, *, pixel_size_um: float, nucleus_diameter_um: float, model=None,
                    lowhigh=None, cellpose_model: str = "cpsam", cellpose_gpu: bool = False,
                    cellpose_diameter_um: float | None = None, cellpose_flow_threshold: float = 0.4,
                    cellpose_cellprob_threshold: float = 0.0, cellpose_batch_size: int = 8) -> np.ndarray:
    """Run cellpose on one 2-D image (one or up to 3 channels).

    Parameters
    ----------
    image_yx : ndarray, shape (Y, X) or (C, Y, X) with C <= 3
        The nuclear channel, or the configured cellpose channels in that order (e.g. a
        membrane/cytoplasm marker and the nuclear channel). A stack is handed to the model channels
        last, ``(Y, X, C)`` with ``channel_axis=2``, the layout of cellpose 4's ``CellposeModel.eval``
        (cellpose 4 ignores the old ``channels=[cyto, nuclei]`` argument and reads up to 3 channels
        in any order). Not modified.
    pixel_size_um, nucleus_diameter_um : float
        The expected diameter in pixels is ``(cellpose_diameter_um or nucleus_diameter_um) / pixel_size_um``.
    model : object, optional
        An object with ``eval(img, diameter=..., ...) -> (masks, flows, styles)``; default: the
        model ``cellpose_model`` loaded by :func:`load_cellpose_model`.
    lowhigh : array-like, shape (C, 2), optional
        Intensities mapped to 0 and 1 per channel (image-level values shared by all tiles of an
        image); default: cellpose normalises each call by its own 1st/99th percentiles.
    cellpose_model : str
        Checkpoint path or built-in model name (used when ``model`` is None).
    cellpose_gpu : bool
        Run the loaded model on the GPU.
    cellpose_diameter_um : float, optional
        Expected object diameter, µm (None = ``nucleus_diameter_um``).
    cellpose_flow_threshold, cellpose_cellprob_threshold : float
        cellpose's ``flow_threshold`` and ``cellprob_threshold``.
    cellpose_batch_size : int
        cellpose's ``batch_size``.

    Returns
    -------
    ndarray of uint32, shape (Y, X)
    """
    if model is None:
        model = load_cellpose_model(cellpose_model, cellpose_gpu=cellpose_gpu)
    d_px = float(cellpose_diameter_um or nucleus_diameter_um) / float(pixel_size_um)
    img = np.asarray(image_yx, dtype=np.float32)
    if img.ndim not in (2, 3) or (img.ndim == 3 and not 1 <= img.shape[0] <= 3):
        raise ValueError(f"cellpose needs a (Y, X) image or a (C, Y, X) stack with C <= 3, got shape {img.shape}")
    yx = img.shape[-2:]
    kw: dict[str, Any] = {}
    n_ch = 1
    if img.ndim == 3:
        n_ch = img.shape[0]
        if n_ch == 1:
            img = img[0]
        else:
            img = np.ascontiguousarray(np.moveaxis(img, 0, -1))  # (Y, X, C)
            kw["channel_axis"] = 2
    normalize: Any = True
    if lowhigh is not None:
        lh = np.asarray(lowhigh, dtype=np.float64).reshape(-1, 2)
        if lh.shape[0] != n_ch:
            raise ValueError(f"lowhigh has {lh.shape[0]} rows for {n_ch} channels")
        if n_ch == 1:  # cellpose adds the channel axis itself: one row for the one channel
            lh = lh[:1]
        normalize = {"lowhigh": lh}
    out = model.eval(img, diameter=d_px, flow_threshold=cellpose_flow_threshold,
                     cellprob_threshold=cellpose_cellprob_threshold, batch_size=cellpose_batch_size,
                     normalize=normalize, **kw)
    masks = np.asarray(out[0] if isinstance(out, (tuple, list)) else out)
    if masks.shape != yx:
        raise ValueError(f"cellpose model returned masks of shape {masks.shape} for an image of shape {yx}")
    if masks.size and masks.min() < 0:
        raise ValueError("cellpose model returned negative labels")
    return masks.astype(np.uint32, copy=False)


def cellpose_provenance(*, cellpose_model: str = "cpsam", cellpose_gpu: bool = False,
                        cellpose_diameter_um: float | None = None, cellpose_flow_threshold: float = 0.4,
                        cellpose_cellprob_threshold: float = 0.0,
                        cellpose_channels: list[str] | None = None) -> dict[str, Any]:
    """``cellpose_version``, ``cellpose_model`` (as configured), ``cellpose_model_path`` (when on disk)
    and the eval parameters; never imports torch (the model file is looked up, not resolved)."""
    out: dict[str, Any] = {
        "cellpose_version": _cellpose_version(),
        "cellpose_model": cellpose_model,
        "cellpose_diameter_um": cellpose_diameter_um,
        "cellpose_flow_threshold": cellpose_flow_threshold,
        "cellpose_cellprob_threshold": cellpose_cellprob_threshold,
        "cellpose_gpu": cellpose_gpu,
        "cellpose_channels": list(cellpose_channels) if cellpose_channels else None,
    }
    p = Path(cellpose_model).expanduser()
    if p.is_file():
        out["cellpose_model_path"] = str(p.resolve())
        out["cellpose_model_size_bytes"] = p.stat().st_size
    else:
        cached = _model_dir() / cellpose_model
        out["cellpose_model_path"] = str(cached) if cached.is_file() else None
    return out
