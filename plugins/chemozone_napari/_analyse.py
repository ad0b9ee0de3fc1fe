"""Analyse one image from napari through the batch runner (no Qt here).

:func:`analyse_steps` is a generator so the widget can run it in a worker thread and show progress; each
step yields ``{"step": i, "n_steps": n, "message": ...}`` and the last one adds ``sample_dir``, ``run_dir`` and
``warnings`` (the run's plausibility warnings, one line each, as ``chemozone run`` prints them). The work is
:func:`chemozone.run.run_batch` on the single image (in process), so the result is exactly
what ``chemozone run IMAGE --config CFG --out OUT`` writes, and it opens with the plugin's reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

N_STEPS = 3


def analyse_steps(image: str | Path, config_path: str | Path | None = None,
                  out: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """Run segmentation → quantification → phenotypes → zones → spatial on one image.

    Parameters
    ----------
    image : path
        The image file.
    config_path : path, optional
        Experiment config (defaults when None).
    out : path, optional
        Run folder to write into (a new temporary folder when None).

    Yields
    ------
    dict
        ``step``, ``n_steps``, ``message``; the final dict also has ``sample_dir``, ``run_dir`` and
        ``warnings`` (list of str: :func:`chemozone.plausibility.format_warning` of each record of
        ``RunResult.warnings``, also in ``run.json``; empty when nothing is implausible).
    """
    from chemozone.config import load_config
    from chemozone.layout import RunLayout, make_tempdir
    from chemozone.plausibility import format_warning
    from chemozone.run import run_batch

    yield {"step": 0, "n_steps": N_STEPS, "message": "checking the config and the image"}
    cfg = load_config(config_path)
    out = Path(out) if out else make_tempdir("chemozone-napari-")
    yield {"step": 1, "n_steps": N_STEPS, "message": f"analysing {Path(image).name} into {out}"}
    result = run_batch(image, cfg, out, in_process=True, progress=False, on_error="raise",
                       command=["napari", "analyse", str(image)])
    ids = RunLayout(out).sample_ids()
    sdir = RunLayout(out).sample_dir(ids[0])
    yield {"step": N_STEPS, "n_steps": N_STEPS, "message": f"done: {sdir}", "sample_dir": str(sdir),
           "run_dir": str(out), "warnings": [format_warning(w) for w in result.warnings]}
