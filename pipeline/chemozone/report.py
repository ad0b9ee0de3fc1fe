"""``chemozone report OUT``: one self-contained HTML page (figures embedded as PNG) for a run folder.

Sections: plausibility warnings (first), cohort summary, failures, per-sample QC thumbnails, gate histograms,
zone area vs dose, infiltration
vs dose (fitted curves with patient-bootstrap CIs per radiation type), cognate specificity, chemokine modules.
Figures are drawn with :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot state).

Any cohort renders: one sample, one condition, no dose variation, no radiation column, no zones, no gates.
A figure that the cohort cannot support is replaced by a sentence saying why (and, for dose figures, the
per-sample values as a table); a section that fails anyway becomes such a sentence, never a traceback.
"""

from __future__ import annotations

import base64
import html
import io
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from ._report_html import (
    _color,
    _fig,
    _figure,
    _guarded,
    _img,
    _no_dose_response,
    _note,
    _png_b64,
    _table,
    _with_arms,
)
from ._report_soft import soft_calls_section
from .errors import ChemozoneError

__all__ = ["write_report", "render_report"]

_MAX_THUMBS = 48
_GATE_SAMPLES = 16
_MAX_GATES = 24
_MAX_BOOTSTRAP = 30  # draws per curve band in the report (the notebooks/stats use the config's n_bootstrap)



# ------------------------------------------------------------------------------------------ sections
_WARNING_ORDER = ["no_cells", "low_tissue", "low_cell_density", "high_cell_density", "pixel_size_from_config",
                  "pixel_size_conflict", "marker_mostly_positive", "marker_rarely_positive", "missing_reference",
                  "gate_warning", "zone_threshold_warning"]


def _warnings(run: dict[str, Any]) -> str:
    """The run's plausibility warnings (``run.json["warnings"]``, :mod:`chemozone.plausibility`), worst first."""
    recs = run["run"].get("warnings")
    if recs is None:
        return _note("run.json has no plausibility record (a run made by an older chemozone); re-run to check "
                     "cell counts, tissue, densities, markers and gates.")
    if not recs:
        return ("<p>No plausibility warnings: every sample has cells, tissue and a plausible cell density; no "
                "marker is almost never or almost always positive; no gate or zone threshold fell back.</p>")
    df = pd.DataFrame(recs, columns=["code", "sample", "message", "value"])
    df["sample"] = df["sample"].fillna("(cohort)")
    rank = {c: i for i, c in enumerate(_WARNING_ORDER)}
    df = df.assign(_r=df["code"].map(rank).fillna(len(rank))).sort_values(["_r", "sample"], kind="stable")
    n_empty = int((df["code"] == "no_cells").sum())
    head = (f"<p class='warn'><b>{len(df)} warning{'s' if len(df) != 1 else ''}</b>"
            + (f", <b>{n_empty} sample{'s' if n_empty != 1 else ''} with 0 cells</b>" if n_empty else "")
            + ": results to look at before trusting the figures below (thresholds: chemozone.plausibility).</p>")
    return head + _table(df.drop(columns="_r"), max_rows=500)


def _empty_samples(run: dict[str, Any]) -> set[str]:
    return {w.get("sample") for w in (run["run"].get("warnings") or []) if w.get("code") == "no_cells"}


def _summary(run: dict[str, Any]) -> str:
    s = run["samples"]
    status = (run["run"].get("samples") or {})
    empty = _empty_samples(run)
    s = s.assign(status=[(status.get(i) or {}).get("status", "unknown") + (", 0 cells" if i in empty else "")
                         for i in s["sample_id"]])
    cols = [c for c in ("radiation", "dose_gy") if c in s.columns]
    parts = [f"<p><b>{len(s)}</b> samples, <b>{s['patient'].nunique() if 'patient' in s else '?'}</b> patients; "
             f"status: {', '.join(f'{k}: {v}' for k, v in s['status'].value_counts().items())}; "
             f"run status: <b>{html.escape(str(run['run'].get('status', '?')))}</b>.</p>"]
    if cols:
        g = s.groupby(cols, dropna=False).agg(samples=("sample_id", "size"),
                                              done=("status", lambda v: int((v == "done").sum())))
        if "patient" in s:
            g["patients"] = s.groupby(cols, dropna=False)["patient"].nunique()
        if len(run["cells"]) and "sample_id" in run["cells"]:
            n = run["cells"].groupby("sample_id").size()
            g["median_cells"] = s.assign(n=s["sample_id"].map(n)).groupby(cols, dropna=False)["n"].median()
        parts.append(_table(g.reset_index(), floatfmt="{:g}"))
    eff = run.get("effectiveness") or {}
    if eff:
        parts.append(_note("Effective dose = factor × physical dose, factors (config stats.effectiveness): "
                           + ", ".join(f"{k} {v:g}" for k, v in eff.items())))
    return "".join(parts)


def _failures(run: dict[str, Any]) -> str:
    rows = [{"sample_id": sid, "status": v.get("status"), "error": v.get("error") or ""}
            for sid, v in (run["run"].get("samples") or {}).items() if v.get("status") != "done"]
    if not rows:
        return "<p>No failed samples.</p>"
    return _table(pd.DataFrame(rows))


def _thumb_from_masks(out: Path, sid: str) -> str | None:
    from .io import list_labels_zarr, read_labels_zarr
    from .layout import RunLayout

    store = RunLayout(out).masks(sid)
    names = list_labels_zarr(store)
    if not names:
        return None
    fig = _fig(2.6, 2.6)
    ax = fig.add_subplot()
    base = None
    if "tissue" in names:
        base = read_labels_zarr(store, "tissue").astype(float) * 0.3
    zones = [n for n in names if n.startswith("zone_")]
    if base is not None:
        rgb = np.stack([base] * 3, -1)
        for i, z in enumerate(zones[:3]):
            m = read_labels_zarr(store, z) > 0
            if m.shape == base.shape:
                rgb[..., i] = np.where(m, 0.9, rgb[..., i])
        ax.imshow(rgb, interpolation="nearest")
    elif "cells" in names:
        from skimage.segmentation import find_boundaries

        lab = read_labels_zarr(store, "cells")
        ax.imshow(find_boundaries(lab), cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(", ".join(z[5:] for z in zones[:3]) or sid, fontsize=7)
    return _png_b64(fig)


def _thumbnail_b64(path: Path, max_side: int = 480) -> str:
    """A qc.png shrunk for embedding (the full-size file stays in the sample folder and is linked)."""

    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _qc(out: Path, run: dict[str, Any]) -> str:
    from .layout import RunLayout

    lay = RunLayout(out)
    status = run["run"].get("samples") or {}
    ids = [sid for sid in run["samples"]["sample_id"] if (status.get(sid) or {}).get("status", "done") == "done"]
    cards = []
    for sid in ids[:_MAX_THUMBS]:
        p = lay.qc(sid)
        if p.is_file():  # a small JPEG embedded, linked to the full-size qc.png in the sample folder
            img = _img(_thumbnail_b64(p), f"QC {sid}", "thumb", mime="image/jpeg")
            img = f"<a href='{html.escape(p.relative_to(out).as_posix())}'>{img}</a>"
        else:
            b64 = _thumb_from_masks(out, sid)
            img = _img(b64, f"QC {sid}", "thumb") if b64 is not None else None
        if img is None:
            cards.append(f"<div class='card'><div class='muted'>no QC image</div><div>{html.escape(sid)}</div></div>")
        else:
            cards.append(f"<div class='card'>{img}<div>{html.escape(sid)}</div></div>")
    more = _note(f"{len(ids) - _MAX_THUMBS} more samples not shown") if len(ids) > _MAX_THUMBS else ""
    if not cards:
        return "<p>No completed samples.</p>"
    return ("<p>Composite, cell outlines and zones per sample (samples/&lt;id&gt;/qc.png, or tissue/zone masks "
            "when absent).</p><div class='grid'>" + "".join(cards) + "</div>" + more)


def _gates(run: dict[str, Any]) -> str:
    """Per marker, each sample's distribution on the gating scale with its gate (``phenotype.plot_gates``)."""
    from .errors import ChemozoneError
    from .phenotype import plot_gates

    gates, cells = run["gates"], run["cells"]
    if not len(gates) or not len(cells):
        return _note("No gates table (run the phenotype step).")
    markers = list(dict.fromkeys(gates["marker"]))[:_MAX_GATES]
    n_samples = min(cells["sample_id"].nunique(), _GATE_SAMPLES)
    ncol = 2
    nrow = int(np.ceil(len(markers) / ncol))
    fig = _fig(6.5 * ncol, (1.0 + 0.32 * n_samples) * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    drawn = 0
    for ax, m in zip(axes, markers):
        try:
            plot_gates(cells, gates, marker=m, ax=ax, max_samples=_GATE_SAMPLES)
            drawn += 1
        except ChemozoneError:  # the marker's intensity column is not in cells.parquet
            ax.set_axis_off()
    for ax in axes[len(markers):]:
        ax.set_axis_off()
    if not drawn:
        return _note("Gates table has no marker with intensities in cells.parquet.")
    more = (f" First {_GATE_SAMPLES} samples shown." if cells["sample_id"].nunique() > _GATE_SAMPLES else "")
    return ("<p>Each sample's distribution of every gated marker on its gating scale (the compartment and "
            "transform of the gate), with the gate used for that sample (red) and the fraction positive."
            + more + "</p>" + _figure(fig, "gate histograms", "Gate histograms"))


def _ci_method(run: dict[str, Any]) -> str:
    """The interval method of the run's config (``stats.ci_method``; student-t for runs written before the key)."""
    return str(((run["run"].get("config") or {}).get("stats") or {}).get("ci_method", "student-t"))


def _dose_figure(df: pd.DataFrame, metrics: list[tuple[str, str]], *, ylabel: str, n_bootstrap: int, seed: int,
                 fits_out: list[pd.DataFrame], models: tuple[str, ...] = ("linear", "loglinear", "emax", "hill"),
                 ci_method: str = "student-t") -> str:
    """One panel per metric: points per sample coloured by radiation, chosen fit + 95 % band per arm.

    Without dose variation (one dose, or no ``dose_gy``) there is no dose response: a sentence says so and
    the per-sample values are shown as a table instead.
    """
    why = _no_dose_response(df)
    if why:
        cols = ["sample_id"] + [c for c in ("patient", "radiation", "dose_gy") if c in df.columns]
        return (_note(f"No {ylabel} vs dose figure: {why}. The per-sample values:")
                + _table(df[cols + [c for c, _ in metrics]]))
    ncol = min(3, len(metrics))
    nrow = int(np.ceil(len(metrics) / ncol))
    fig = _fig(4.2 * ncol, 3.2 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, (col, title) in zip(axes, metrics):
        sub = df[np.isfinite(df[col].astype(float))]
        for rad, g in sub.groupby(sub["radiation"].astype(str)):
            jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(g))
            ax.scatter(g["dose_gy"] + jitter, g[col], s=10, color=_color(rad), alpha=0.6,
                       label=rad if g["dose_gy"].max() > 0 else f"{rad} (0 Gy)",
                       marker="o" if g["dose_gy"].max() > 0 else "x")
        try:
            fits, boot = stats.fit_dose_response_with_bootstrap(sub, metric=col, n_bootstrap=n_bootstrap, seed=seed,
                                                                models=models, ci_method=ci_method)
        except (ChemozoneError, ValueError) as e:
            ax.set_title(f"{title}\n(no fit: {e})", fontsize=7)
            continue
        if not len(fits) or "group" not in fits.columns:
            ax.set_title(f"{title}\n(no fit: too few samples or doses)", fontsize=7)
            continue
        fits_out.append(fits)
        for grp in fits["group"].unique():
            chosen = fits[(fits["group"] == grp) & fits["chosen"]]
            if not len(chosen):  # too few samples for any model in this arm
                continue
            ch = chosen.iloc[0]
            dmax = float(sub.loc[sub["radiation"].astype(str) == grp, "dose_gy"].max())
            grid = np.linspace(0, dmax, 60)
            cur = stats.predict_dose_response(fits, grid, boot=boot, metric=col, group=grp)
            ax.plot(cur["dose"], cur["fit"], color=_color(grp), lw=1.8,
                    label=f"{grp}: {ch['model']}" + (f", ED50 {ch['ED50']:.1f} Gy" if np.isfinite(ch["ED50"]) else ""))
            if "lo" in cur:
                ax.fill_between(cur["dose"], cur["lo"], cur["hi"], color=_color(grp), alpha=0.15, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("physical dose (Gy)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, frameon=False)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    return _figure(fig, f"{ylabel} vs dose", f"{ylabel} vs dose, fitted curve (chosen by AIC) and pointwise "
                                             f"95% patient-bootstrap band per radiation type")


def _fit_summary(fits: list[pd.DataFrame]) -> str:
    if not fits:
        return ""
    f = pd.concat(fits, ignore_index=True)
    f = f[f["chosen"]]
    cols = ["metric", "group", "model", "E0", "Emax", "ED50", "ED50_ci_lo", "ED50_ci_hi", "slope", "log_slope",
            "plateau_delta_aic", "plateau_vs_loglinear_delta_aic", "plateau", "tost_p", "n_bootstrap",
            "n_bootstrap_failed", "ci_method"]
    cols = [c for c in cols if c in f.columns]
    return "<details><summary>Fitted parameters (chosen model per arm)</summary>" + _table(f[cols]) + "</details>"


def _no_zones(run: dict[str, Any]) -> bool:
    cfg = run["run"].get("config")
    return isinstance(cfg, dict) and "zones" in cfg and not cfg["zones"]


_NO_ZONES = "No zones configured (the config's zones list is empty): no zone areas or infiltration to show."


def _zone_area(run: dict[str, Any], nb: int, seed: int) -> str:
    if _no_zones(run):
        return _note(_NO_ZONES)
    if not len(run["zones"]):
        return _note("No zones table (run the zones step).")
    za = stats.zone_area_table(run)
    cols = [c for c in za.columns if c.startswith("area_fraction_")]
    if not cols or "dose_gy" not in za:
        return _note("No zone areas or doses to plot.")
    fits: list[pd.DataFrame] = []
    fig = _dose_figure(za, [(c, c[len("area_fraction_"):]) for c in cols[:9]], ylabel="zone area fraction",
                       n_bootstrap=nb, seed=seed, fits_out=fits, ci_method=_ci_method(run))
    return fig + _fit_summary(fits)


def _zone_thresholds(run: dict[str, Any]) -> str:
    """How the pixel zones were called: the cohort step's thresholds, one row per distinct value (a reference mode
    gives one per patient) with its compartment offsets, the samples it applies to and any fallback warning."""
    zt = run.get("zone_thresholds")
    if zt is None or not len(zt) or not {"zone", "channel", "mode", "threshold"} <= set(zt.columns):
        return ""
    keys = [c for c in ("zone", "channel", "mode", "threshold", "tumor_offset", "stroma_offset") if c in zt.columns]
    who = "patient" if "patient" in zt.columns else "sample_id"
    zt = zt.assign(warning=zt["warning"].fillna("").astype(str) if "warning" in zt.columns else "")
    rows = zt.groupby(keys, dropna=False, sort=False).agg(
        n_samples=("sample_id", "nunique"),
        applies_to=(who, lambda v: ", ".join(sorted({str(x) for x in v}))),
        warning=("warning", lambda v: "; ".join(sorted({w for w in v if w})))).reset_index()
    offsets = ("tumor_offset" in rows.columns and bool((rows[["tumor_offset", "stroma_offset"]].abs() > 0).any().any()))
    why = (" Tumor and stroma offsets: the background in tumor nests and in stroma relative to the reference cells' "
           "median; the zone is where the signal minus the offset at the position's tumor fraction reaches the "
           "threshold." if offsets else "")
    intro = f"One row per distinct threshold; applies_to lists the {who}s it was used for." + why
    return ("<details><summary>Zone thresholds (the cohort step's, <code>zone_thresholds.parquet</code>; image units "
            f"after background subtraction)</summary><p>{html.escape(intro)}</p>"
            + _table(rows, floatfmt="{:.4g}") + "</details>")


def _zone_definition(z: Any) -> str:
    """One zone (a :class:`~chemozone.config.ZoneConfig`) in words: what it is built from and with which settings."""
    th = z.threshold
    bands = f"bands {', '.join(f'{b:g}' for b in z.bands_um)} µm"
    if z.source in ("pixels", "tumor"):
        detail = {"halfmax": f"fraction {th.fraction:g}", "reference": f"q {th.quantile:g}",
                  "background": f"error rate {th.error_rate:g}", "pooled": th.method, "per_sample": th.method,
                  "absolute": f"value {th.value}"}.get(th.mode, "")
        head = f"{' + '.join(z.channels)} smoothed at {z.smooth_um:g} µm, threshold {th.mode}"
        if z.source == "tumor":
            return f"{head}; {bands}"
        return f"{head}{' (' + detail + ')' if detail else ''}, pieces ≥ {z.min_area_um2:g} µm²"
    if z.source == "producers":
        who = f"{z.producer_marker}+ cells" + (f" ({', '.join(z.producer_cell_types)})" if z.producer_cell_types else "")
        if z.milieu == "hull":
            hull = "convex hull" if z.hull_ratio >= 1 else f"concave hull (ratio {z.hull_ratio:g})"
            return (f"{who} linked within {z.link_um:g} µm, patches of ≥ {z.min_producers}; {hull} widened by "
                    f"{z.radius_um:g} µm (Hoch et al. 2022)")
        return (f"tissue with ≥ {z.min_producers} {who} within {z.radius_um:g} µm" if z.min_producers > 1
                else f"tissue within {z.radius_um:g} µm of {who}")
    if z.source == "tumor_cells":
        return f"cells with {z.tumor_column} in {', '.join(z.tumor_values)}; {bands}"
    return f"annotated regions of class {z.region_class}"  # source: regions


def _zone_definitions(run: dict[str, Any]) -> str:
    """How each zone of the run's config is built (source and settings), so a reader of the figures knows what a
    zone is without the YAML (the zones as the config model reads them, defaults included)."""
    from .config import ZoneConfig

    cfg = run["run"].get("config")
    zones = [ZoneConfig.model_validate(z) for z in ((cfg or {}).get("zones") or [] if isinstance(cfg, dict) else [])]
    if not zones:
        return ""
    rows = pd.DataFrame([{"zone": z.name, "source": z.source, "definition": _zone_definition(z)} for z in zones])
    return "<details><summary>Zone definitions (the run's config)</summary>" + _table(rows) + "</details>"


def _pairs(run: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    cfg = (run["run"].get("config") or {}).get("spatial") or {}
    pairs = [(p["zone"], p["receptor"], list(p.get("cell_types") or [])) for p in cfg.get("cognate_pairs") or []]
    zones = set(run["infiltration"]["zone"]) if len(run["infiltration"]) else set()
    return [p for p in pairs if p[0] in zones]


def _zone_density_figure(counts: pd.DataFrame) -> str:
    """Pooled density inside each zone (Σ cells / Σ zone area per dose and arm, Poisson 95 % CI): receptor± lines."""
    from scipy import stats as sst

    keys = list(counts.groupby(["zone", "receptor", "cell_type"], sort=False).groups)[:12]
    ncol = min(3, len(keys))
    nrow = int(np.ceil(len(keys) / ncol))
    fig = _fig(4.2 * ncol, 3.2 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    inside = counts[(counts["region"] == "inside") & (counts["area_mm2"] > 0)].copy()
    inside["arm"] = np.where(inside["dose_gy"].astype(float) > 0, inside["radiation"].astype(str), "0 Gy")
    for ax, (zone, receptor, ct) in zip(axes, keys):
        sub = inside[(inside["zone"] == zone) & (inside["receptor"] == receptor) & (inside["cell_type"] == ct)]
        zero = sub[sub["arm"] == "0 Gy"]
        for arm in sorted(set(sub["arm"]) - {"0 Gy"}):
            for status, ls, mk in (("pos", "-", "o"), ("neg", "--", "s")):
                g = pd.concat([zero, sub[sub["arm"] == arm]])
                g = g[g["status"] == status].groupby("dose_gy")[["n_cells", "area_mm2"]].sum().reset_index()
                n, a = g["n_cells"].to_numpy(float), g["area_mm2"].to_numpy(float)
                lo = np.where(n > 0, sst.chi2.ppf(0.025, 2 * n) / 2, 0.0) / a
                hi = sst.chi2.ppf(0.975, 2 * n + 2) / 2 / a
                dens = n / a
                sign = "+" if status == "pos" else "−"
                ax.errorbar(g["dose_gy"], dens, yerr=[dens - lo, hi - dens], color=_color(arm), ls=ls, marker=mk,
                            ms=3, lw=1.2, capsize=2, mfc="none" if status == "neg" else _color(arm),
                            label=f"{arm} {receptor}{sign}")
        ax.set_title(f"{ct} in {zone} zone", fontsize=9)
        ax.set_xlabel("physical dose (Gy)", fontsize=8)
        ax.set_ylabel("cells per mm² of zone (inside)", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, frameon=False)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    return _figure(fig, "density inside zone vs dose",
                   "Density inside the zone (cells per mm² of zone): cells pooled over the samples at each dose "
                   "(Σ cells / Σ zone area), exact Poisson 95% CI; receptor+ solid, receptor− dashed")


_INFILTRATION_TEXT = (
    "<p><b>Which metric answers which question.</b> The chemokine zones grow with dose, so the denominator "
    "matters. <i>Infiltration amount</i> = cognate receptor+ cells inside the zone per mm² of <b>tissue</b>: "
    "how many attracted cells the zone gathered (first figure, fitted linear vs Emax). This number grows "
    "with the zone for <i>any</i> population, attracted or not, so it is never used for specificity. "
    "<i>Specificity</i> is judged on metrics that are not confounded by zone size: the density inside the "
    "zone (cells per mm² of <b>zone</b>, second figure) and the log2 enrichment inside vs outside the zone. "
    "Both are estimated from the counts with the areas as offsets (quasi-Poisson GLM, patient effects; "
    "the enrichment also cancels each sample's overall abundance), so tiny 0 Gy zones do not dominate. "
    "Receptor− cells that are not attracted should show a slope whose 95% CI includes 0.</p>")


def _dose_trends(run: dict[str, Any], counts: pd.DataFrame, pairs) -> str:
    """Dose-trend tables of the receptor counts (and adjusted for the other zones, when the run has overlaps)."""
    no_dose = _no_dose_response(counts)
    if no_dose:
        return _note(f"No dose trend tests: {no_dose}.")
    tests = pd.concat([stats.dose_rate_test(counts, contrast=c) for c in ("enrichment", "density")],
                      ignore_index=True)
    tests = tests.drop(columns=["warning", "adjusted_for"]).rename(columns={"estimate": "log2 per Gy"})
    tests.insert(tests.columns.get_loc("p") + 1, "p (BH-FDR)", stats.bh_fdr(tests["p"]))
    adjusted = ""
    ovl = run.get("zone_overlap")
    if ovl is not None and len(ovl) and any(c.startswith("in_") for c in ovl.columns):
        oc = stats.receptor_overlap_counts(run, pairs=pairs)
        at = pd.concat([stats.dose_rate_test(oc, contrast=c) for c in ("enrichment", "density")], ignore_index=True)
        at = at.drop(columns=["warning"]).rename(columns={"estimate": "log2 per Gy"})
        at.insert(at.columns.get_loc("p") + 1, "p (BH-FDR)", stats.bh_fdr(at["p"]))
        adjusted = ("<p>The same trends <b>adjusted for the other zones</b> (counts per in/out combination of "
                    "the zones, <code>zone_overlap.parquet</code>; each other zone adds its own level and dose "
                    "trend). Chemokine zones co-localise, and more so as they grow with dose: a receptor− cell "
                    "that carries another zone's receptor is drawn into that zone and so into the overlapping "
                    "part of this one. Use these rows for the receptor− specificity control:</p>" + _table(at))
    return ("<p>Dose trend per arm (0 Gy controls shared), log2 units per Gy with 95% CI; <i>p (BH-FDR)</i> "
            "is adjusted over the rows of the table (with many populations, one in twenty crosses p &lt; 0.05 "
            "by chance):</p>" + _table(tests) + adjusted)


def _infiltration(run: dict[str, Any], nb: int, seed: int) -> str:
    inf = run["infiltration"]
    if _no_zones(run):
        return _note(_NO_ZONES)
    if not len(inf):
        return _note("No infiltration table (run the spatial step).")
    pairs = _pairs(run)
    if not pairs:
        return _note("No cognate pairs configured (spatial.cognate_pairs); nothing to plot by receptor.")
    counts = stats.receptor_count_table(run, pairs=pairs)
    if not len(counts) or not counts["n_cells"].sum():
        return _note("No receptor-flagged phenotypes found in the infiltration table.")
    df = stats.receptor_density_table(run, pairs=pairs, per="tissue")
    panels = [(c, c) for c in df.columns if " in " in c and c.split(" in ")[0].endswith("+")]
    fits: list[pd.DataFrame] = []
    amount = _dose_figure(df, panels[:12], ylabel="receptor+ cells inside zone per mm² tissue", n_bootstrap=nb,
                          seed=seed, fits_out=fits, models=("linear", "loglinear", "emax"), ci_method=_ci_method(run))
    return (_INFILTRATION_TEXT + "<h3>Infiltration amount (receptor+ cells in zone per mm² tissue)</h3>" + amount
            + _fit_summary(fits)
            + "<h3>Density inside the zone (per mm² of zone): receptor+ vs receptor−</h3>"
            + _zone_density_figure(counts) + _dose_trends(run, counts, pairs))


def _cognate(run: dict[str, Any]) -> str:
    pairs = _pairs(run)
    if _no_zones(run):
        return _note(_NO_ZONES)
    if not pairs or not len(run["infiltration"]):
        return _note("No cognate pairs configured (spatial.cognate_pairs) or no infiltration table.")
    res = stats.cognate_test(run["infiltration"], pairs=pairs, min_dose_gy=None)
    if not len(res):
        return _note("No receptor-flagged populations for the configured pairs.")
    fig = _fig(6.0, 0.5 + 0.45 * len(res))
    ax = fig.add_subplot()
    ylab = [f"{r.cell_type} {r.receptor} in {r.zone}" for r in res.itertuples()]
    yy = np.arange(len(res))
    ax.errorbar(res["estimate"], yy, xerr=[res["estimate"] - res["ci_lo"], res["ci_hi"] - res["estimate"]],
                fmt="o", color="#333333", capsize=3)
    ax.axvline(0, color="#999999", lw=1)
    ax.set_yticks(yy, ylab, fontsize=8)
    ax.set_xlabel("log2 enrichment in zone, receptor+ minus receptor− (95% CI)", fontsize=8)
    ax.invert_yaxis()
    return ("<p>Per sample, log2(density inside zone / outside) for receptor+ and receptor− cells of the "
            "same lineage; mixed model with a random intercept per patient; p adjusted (BH).</p>"
            + _figure(fig, "cognate specificity", "Cognate specificity")
            + _table(res.drop(columns=["warning"])))


def _modules(run: dict[str, Any]) -> str:
    cells = run["cells"]
    if not len(cells):
        return _note("No cells table.")
    markers = [c[:-4] for c in cells.columns if c.endswith("_pos")
               and c.upper().startswith(("CXCL", "CCL", "CX3CL", "XCL"))]
    if len(markers) < 2:
        return _note("Fewer than two gated chemokine markers: no module analysis.")
    tumor = cells[cells["cell_type"].astype(str).str.startswith("Tumor")] if "cell_type" in cells else cells
    varying = [m for m in markers if tumor[f"{m}_pos"].nunique() > 1]
    if len(varying) < 2:
        return _note(f"Fewer than two chemokine markers vary among the {len(tumor)} tumor cells (positive in some "
                     f"cells, negative in others; varying: {varying or 'none'}): no co-expression to correlate.")
    try:
        res = stats.chemokine_modules(cells, markers=markers)
    except ChemozoneError as e:
        return _note(str(e))
    corr = res["corr"].loc[res["order"], res["order"]]
    fig = _fig(1.5 + 0.5 * len(markers), 1.0 + 0.45 * len(markers))
    ax = fig.add_subplot()
    im = ax.imshow(corr.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(corr)), [f"{m} ({res['modules'][m]})" for m in corr.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(len(corr)), corr.index, fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Spearman ρ")
    return (f"<p>Spearman correlation of chemokine positivity across {res['n_units']} tumor cells, ordered by "
            "hierarchical clustering; module number in brackets.</p>"
            + _figure(fig, "chemokine modules", "Chemokine co-expression modules"))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;
color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.muted{color:#888}.note{color:#555;font-style:italic}
.warn{background:#fff4e0;border-left:4px solid #e08a00;padding:6px 10px}
table.tbl{border-collapse:collapse;font-size:12px;margin:8px 0}
table.tbl th,table.tbl td{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.tbl th{background:#f3f3f3}
img.fig{max-width:100%;height:auto;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:8px}.card{width:180px;font-size:10px;text-align:center;word-break:break-all}
img.thumb{width:176px;height:auto;border:1px solid #ccc}
figure{margin:8px 0}figcaption{font-size:12px;color:#555}
nav a{margin-right:12px}
"""


_SECTIONS = (("warnings", "Warnings"), ("summary", "Cohort summary"), ("failures", "Failures"),
             ("qc", "Per-sample QC"), ("gates", "Gates"), ("zones", "Zone area vs dose"),
             ("infiltration", "Infiltration vs dose"), ("cognate", "Cognate specificity"),
             ("modules", "Chemokine modules"))
_HEAVY = ("zones", "infiltration", "gates", "cognate", "modules")
"""Sections that fit models or draw many figures: tasks of the run's workers or of a process pool when
``processes > 1`` (largest first)."""


def _section(key: str, run: dict[str, Any], out: Path, nb: int, seed: int) -> str:
    """One section's HTML (a failing section becomes a sentence: :func:`_guarded`)."""
    if key == "warnings":
        return _guarded(_warnings, run)
    if key == "summary":
        return _guarded(_summary, run)
    if key == "failures":
        return _guarded(_failures, run)
    if key == "qc":
        return _guarded(_qc, out, run)
    if key == "gates":
        return _guarded(_gates, run)
    if key == "zones":  # the thresholds table also when the cohort has no dose response to show
        return (_guarded(_zone_area, run, nb, seed) + _guarded(_zone_definitions, run)
                + _guarded(_zone_thresholds, run))
    if key == "infiltration":
        return _guarded(_infiltration, run, nb, seed)
    if key == "cognate":
        return _guarded(_cognate, run) + _guarded(soft_calls_section, run, out, nb, seed)
    return _guarded(_modules, run)


def _load(out: Path) -> tuple[dict[str, Any], int, int]:
    run = _with_arms(stats.load_run(out, missing="empty"))
    st = ((run["run"].get("config") or {}).get("stats") or {})
    return run, int(min(st.get("n_bootstrap", 200), _MAX_BOOTSTRAP)), int(st.get("seed", 0))


def _section_from_folder(out: str, key: str) -> str:
    """A worker process's task: load the run folder itself (no tables pickled across) and render one section."""
    run, nb, seed = _load(Path(out))
    return _section(key, run, Path(out), nb, seed)


def _sections(out: Path, run: dict[str, Any], nb: int, seed: int, processes: int, executor: Any = None
              ) -> dict[str, str]:
    """Every section's HTML; the heavy ones as tasks of ``executor`` (a run's Dask workers, already warm) or, with
    ``processes > 1``, of a pool of that many spawned processes (each section's statistics are seeded, so the text
    is the same as in one process), the light ones here meanwhile. A heavy section whose task fails (a lost worker,
    processes that cannot start) is rendered here, with a warning."""
    if executor is None and processes > 1:
        import concurrent.futures as cf
        import multiprocessing

        with cf.ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            return _sections(out, run, nb, seed, 1, pool)
    if executor is None:
        return {k: _section(k, run, out, nb, seed) for k, _ in _SECTIONS}
    futures = {k: _submit(executor, _section_from_folder, str(out), k) for k in _HEAVY}
    done = {k: _section(k, run, out, nb, seed) for k, _ in _SECTIONS if k not in futures}
    for k, f in futures.items():
        try:
            done[k] = f.result()
        except Exception as exc:  # noqa: BLE001 - sections guard their own errors: this is a lost worker
            import logging

            logging.getLogger("chemozone").warning("report: section %s failed on a worker (%s: %s); rendering "
                                                   "it here", k, type(exc).__name__, exc)
            done[k] = _section(k, run, out, nb, seed)
    return done


def _submit(executor: Any, fn, *args):
    """``executor.submit(fn, *args)``; a submission that fails (e.g. a process pool that cannot start its processes:
    ``OSError``, ``BrokenProcessPool``) becomes a future holding that error."""
    try:
        return executor.submit(fn, *args)
    except Exception as exc:  # noqa: BLE001 - rendered in this process instead, with a warning
        from concurrent.futures import Future

        failed: Future = Future()
        failed.set_exception(exc)
        return failed


def render_report(out: str | os.PathLike, *, processes: int = 1, executor: Any = None) -> str:
    """The report's HTML text for a run folder (see :func:`write_report`)."""
    out = Path(out)
    run, nb, seed = _load(out)
    html_by_key = _sections(out, run, nb, seed, int(processes), executor)
    sections = [(k, t, html_by_key[k]) for k, t in _SECTIONS]
    ver = (run["run"].get("versions") or {}).get("chemozone", "?")
    nav = "".join(f"<a href='#{k}'>{html.escape(t)}</a>" for k, t, _ in sections)
    body = "".join(f"<section id='{k}'><h2>{html.escape(t)}</h2>{b}</section>" for k, t, b in sections)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>chemozone report: "
            f"{html.escape(out.name)}</title><style>{_CSS}</style></head><body>"
            f"<h1>chemozone report</h1><p class='muted'>{html.escape(str(out.resolve()))} · chemozone {ver} · "
            f"written {now}</p><nav>{nav}</nav>{body}</body></html>")


def write_report(out: str | os.PathLike, *, processes: int = 1, executor: Any = None) -> Path:
    """Write ``OUT/report.html`` (self-contained: figures are embedded PNGs) and return its path.

    ``processes``: render the sections that fit models or draw many figures in that many worker processes (the
    CLI passes the run's local worker count); the same report as with one. ``executor``: render them as its tasks
    instead (``submit(fn, *args)`` returning a future; :func:`chemozone.scheduler.task_executor` of a run's Dask
    client, whose workers have the libraries imported already); the same report too.

    Raises
    ------
    RunError
        ``out`` is not a run folder (no ``run.json``).
    MissingStepError
        The run folder has no ``samples.parquet``.
    """
    from .layout import RunLayout, atomic_write_text

    out = Path(out)
    from .layout import read_run_json

    read_run_json(out)  # RunError if this is not a run folder
    if not RunLayout(out).cohort_samples.is_file():
        from .errors import MissingStepError

        raise MissingStepError(f"{RunLayout(out).cohort_samples}: no sample table; run 'chemozone run' into {out} first")
    return atomic_write_text(RunLayout(out).report, render_report(out, processes=processes, executor=executor))
