"""Building blocks of the report page (:mod:`chemozone.report`): figures as embedded PNGs, tables, notes, and
what makes every section render for any cohort (arms without a radiation column, "no dose response" reasons,
a guard that turns a failing section into a sentence)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd

_COLORS = {"photon": "#1f77b4", "proton": "#2ca02c", "carbon": "#d62728", "helium": "#9467bd"}


def _fig(w: float = 6.0, h: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=90, layout="constrained")


def _png_b64(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str, cls: str = "fig", mime: str = "image/png") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:{mime};base64,{b64}">'


def _figure(fig, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{_img(_png_b64(fig), alt)}{cap}</figure>"


def _table(df: pd.DataFrame, *, floatfmt: str = "{:.3g}", max_rows: int = 200) -> str:
    if df is None or not len(df):
        return "<p class='muted'>(empty)</p>"
    d = df.head(max_rows).copy()
    for c in d.columns:
        if pd.api.types.is_float_dtype(d[c]):
            d[c] = d[c].map(lambda v: "" if pd.isna(v) else floatfmt.format(v))
    more = f"<p class='muted'>{len(df) - max_rows} more rows not shown</p>" if len(df) > max_rows else ""
    return d.to_html(index=False, escape=True, border=0, classes="tbl") + more


def _note(msg: str) -> str:
    return f"<p class='note'>{html.escape(msg)}</p>"


def _color(rad: str) -> str:
    return _COLORS.get(rad, "#7f7f7f")


_NO_ARM = "unspecified"  # the radiation of samples whose sheet gives none


def _no_dose_response(df: pd.DataFrame) -> str:
    """Why a table has no dose response to show ("" when it has one: at least two distinct doses)."""
    if "dose_gy" not in df.columns:
        return "the sample sheet has no dose_gy column"
    doses = pd.to_numeric(df["dose_gy"], errors="coerce").dropna().unique()
    if len(doses) == 0:
        return "no sample has a dose_gy"
    if len(doses) == 1:
        return f"every sample has the same dose ({doses[0]:g} Gy)"
    return ""


def _with_arms(run: dict[str, Any]) -> dict[str, Any]:
    """The loaded run with a ``radiation`` value in every table (``unspecified`` where the sheet gives none), so
    a cohort without a radiation column groups as one arm."""
    out = dict(run)
    for name, df in run.items():
        if not isinstance(df, pd.DataFrame) or "sample_id" not in df.columns:
            continue
        if "radiation" in df.columns:
            out[name] = df.assign(radiation=df["radiation"].astype("string").fillna(_NO_ARM))
        elif name != "gates" and len(df.columns) > 1:
            out[name] = df.assign(radiation=_NO_ARM)
    return out


def _guarded(fn, *args) -> str:
    """A section's HTML, or a sentence saying why it could not be drawn (the report never fails on one section;
    the run folder's tables stay complete)."""
    import logging

    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - one section must never take the whole report down
        logging.getLogger("chemozone").exception("report section %s failed", getattr(fn, "__name__", fn))
        return _note(f"This section could not be drawn for this cohort ({type(exc).__name__}: "
                     f"{' '.join(str(exc).split())}); the tables in the run folder are complete.")


