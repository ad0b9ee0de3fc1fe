"""Report block: hard vs soft (classifier probability) calls side by side, and the classifier's metrics.

Shown under "Cognate specificity" when the cells table has ``{receptor}_prob`` columns: the cognate receptor+
vs receptor− log2 specificity of every configured pair and lineage from the hard calls (``{receptor}_pos``) and
from expected counts (Σ p), each with its patient-bootstrap CI (soft: every cell's call resampled as
Bernoulli(p) inside the bootstrap, :func:`chemozone.stats.cognate_call_bootstrap`), how far the estimate moves
and whether the conclusion (CI above 0, below 0, or across 0) changes. Then the cross-validated metrics the
classifier's training wrote to ``classifier/metrics.json`` (:attr:`chemozone.layout.RunLayout.classifier_metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from ._report_html import _note, _table
from .layout import RunLayout

__all__ = ["soft_calls_section", "classifier_metrics_table", "conclusion"]


def conclusion(lo: float, hi: float) -> str:
    """``"> 0"``, ``"< 0"`` or ``"includes 0"`` for a CI (``"n/a"`` when undefined).

    >>> conclusion(0.2, 1.0), conclusion(-1.0, 0.5), conclusion(float("nan"), 1.0)
    ('> 0', 'includes 0', 'n/a')
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    return "> 0" if lo > 0 else "< 0" if hi < 0 else "includes 0"


def classifier_metrics_table(path: str | Path) -> pd.DataFrame | None:
    """The classifier's cross-validated metrics as a table (``marker, balanced_accuracy, f1, n_labels``).

    Parameters
    ----------
    path : path
        ``classifier/metrics.json``: ``{marker: {"balanced_accuracy": .., "f1": .., "n_labels": ..}}``.

    Returns
    -------
    DataFrame or None
        None when the file does not exist.

    Raises
    ------
    ValueError
        The file is not such a JSON object (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); re-train the classifier to rewrite it") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected {{marker: {{balanced_accuracy, f1, n_labels}}}}; re-train the classifier")
    rows = [{"marker": m, "balanced_accuracy": v.get("balanced_accuracy", np.nan), "f1": v.get("f1", np.nan),
             "n_labels": v.get("n_labels", np.nan)} for m, v in data.items()]
    return pd.DataFrame(rows)


def _side_by_side(hard: pd.DataFrame, soft: pd.DataFrame) -> pd.DataFrame:
    keys = ["zone", "receptor", "cell_type"]
    h = hard.set_index(keys)[["n_pos", "estimate", "ci_lo", "ci_hi"]]
    s = soft.set_index(keys)[["n_pos", "estimate", "ci_lo", "ci_hi"]]
    t = h.add_prefix("hard ").join(s.add_prefix("soft "), how="outer").reset_index()
    t["shift (soft − hard)"] = t["soft estimate"] - t["hard estimate"]
    t["hard: CI"] = [conclusion(lo, hi) for lo, hi in zip(t["hard ci_lo"], t["hard ci_hi"])]
    t["soft: CI"] = [conclusion(lo, hi) for lo, hi in zip(t["soft ci_lo"], t["soft ci_hi"])]
    t["conclusion changes"] = np.where(t["hard: CI"] != t["soft: CI"], "yes", "")
    return t


def soft_calls_section(run: dict[str, Any], out: str | Path, nb: int, seed: int) -> str:
    """HTML of the hard-vs-soft comparison and the classifier metrics ("" when no ``_prob`` column exists)."""
    cells = run["cells"]
    probs = {c[: -len("_prob")] for c in cells.columns if c.endswith("_prob")}
    metrics = classifier_metrics_table(RunLayout(out).classifier_metrics)
    if not probs and metrics is None:
        return ""
    html = "<h3>Hard vs soft receptor calls</h3>"
    cfg = (run["run"].get("config") or {}).get("spatial") or {}
    zones = set(run["infiltration"]["zone"]) if len(run["infiltration"]) else set()
    pairs = [(p["zone"], p["receptor"], list(p.get("cell_types") or [])) for p in cfg.get("cognate_pairs") or []
             if p["zone"] in zones and p["receptor"] in probs and f"{p['receptor']}_pos" in cells.columns]
    if not pairs:
        html += _note("No configured cognate pair has both a hard call ({receptor}_pos) and a probability "
                      "({receptor}_prob) in the cells table, or no zone to compare in.")
    else:
        opts = dict(pairs=pairs, n_bootstrap=nb, seed=seed, edge_exclusion_um=float(cfg.get("edge_exclusion_um", 0)))
        hard = stats.cognate_call_bootstrap(cells, run["infiltration"], calls="hard", **opts)
        soft = stats.cognate_call_bootstrap(cells, run["infiltration"], calls="soft", **opts)
        t = _side_by_side(hard, soft)
        n_change = int((t["conclusion changes"] == "yes").sum())
        html += (f"<p>Cognate log2 specificity (receptor+ minus receptor− log2 enrichment in the zone, mean over "
                 f"samples) from the hard calls and from the classifier's probabilities (expected counts: "
                 f"receptor+ = Σ p, receptor− = Σ (1 − p)). 95% CIs from {nb} patient-bootstrap draws; for soft "
                 f"calls every draw also resamples each cell's call as Bernoulli(p), so an unsure classifier "
                 f"widens the interval. <b>{n_change} of {len(t)}</b> conclusions change between hard and soft "
                 f"calls.</p>" + _table(t))
    if metrics is None:
        html += _note(f"No classifier metrics ({RunLayout(out).classifier_metrics.relative_to(Path(out))}); "
                      "the classifier's training writes them.")
    else:
        html += "<p>The classifier's cross-validated metrics (from its training):</p>" + _table(metrics)
    return html
