"""The rule table: cell types from the ``{marker}_pos`` flags, receptor flags, and checks of the rules."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import MarkerConfig, RuleConfig
from ..errors import ChannelError, ConfigError, require_columns
from ._gates import apply_gates

_NON_IMMUNE_PREFIXES = ("tumor", "stroma")


# ------------------------------------------------------------------------------------------ validation
def _rule_name(i: int, rule: RuleConfig) -> str:
    return f"phenotypes.rules[{i}] '{rule.cell_type}'"


def _implies(later: RuleConfig, earlier: RuleConfig) -> bool:
    """True when every cell matching ``later`` also matches ``earlier`` (so ``later`` is unreachable)."""
    if not set(earlier.pos) <= set(later.pos) or not set(earlier.neg) <= set(later.neg):
        return False
    if not earlier.any:
        return True
    if set(earlier.any) & set(later.pos):
        return True
    later_any = set(later.any) - set(later.neg)
    return bool(later.any) and later_any <= set(earlier.any)


def validate_phenotypes(
    channels: Sequence[str],
    *,
    markers: Collection[str],
    rules: Sequence[RuleConfig] = (),
    receptors: Sequence[str] = (),
    receptor_cell_types: Sequence[str] | None = None,
    default_cell_type: str = "Other",
    aliases: Mapping[str, list[str]] | None = None,
) -> None:
    """Check the phenotype rules, receptors and gated markers against each other and the image's channels.

    Parameters
    ----------
    channels : list of str
        Channel names of the image (or the panel); matched with :func:`chemozone.io.resolve_channels`
        (case, spacing, fluorophore suffixes and ``aliases``).
    markers : collection of str
        The gated markers (``phenotypes.markers``; its mapping of marker configs works as is).
    rules : sequence of RuleConfig
        ``phenotypes.rules``, in order.
    receptors : sequence of str
        ``phenotypes.receptors``.
    receptor_cell_types : sequence of str, optional
        ``phenotypes.receptor_cell_types``.
    default_cell_type : str
        ``phenotypes.default_cell_type``.
    aliases : dict, optional
        ``panel.aliases``.

    Raises
    ------
    ConfigError
        One line naming the rule or marker (by its YAML key, e.g. ``phenotypes.rules[2] 'NK'``): a rule marker
        that is not under ``phenotypes.markers``, a gated marker that the image lacks, a contradictory rule
        (a marker both positive and negative, or every ``any`` marker also negative), a rule that an earlier
        rule shadows completely, a receptor that is not a gated marker, or a ``receptor_cell_types`` entry
        that no rule produces.

    Examples
    --------
    >>> from chemozone.config import RuleConfig
    >>> rules = [RuleConfig(cell_type="T", pos=["CD3"])]
    >>> validate_phenotypes(["DAPI", "CD3"], markers=["CD3"], rules=rules)
    >>> validate_phenotypes(["DAPI"], markers=["CD3"], rules=rules)
    Traceback (most recent call last):
    ...
    chemozone.errors.ConfigError: phenotypes.markers.CD3 (used by phenotypes.rules[0] 'T'): no channel 'CD3' ...
    """
    names = list(markers)
    for i, rule in enumerate(rules):
        _check_rule(i, rule, rules[:i], names)
    for r in receptors:
        if r not in names:
            raise ConfigError(
                f"phenotypes.receptors: '{r}' is not a gated marker (gated markers: {names}); "
                "add it under phenotypes.markers"
            )
    if receptor_cell_types is not None:
        known = {r.cell_type for r in rules} | {default_cell_type}
        for ct in receptor_cell_types:
            if ct not in known:
                raise ConfigError(
                    f"phenotypes.receptor_cell_types: '{ct}' is not a cell type of any rule "
                    f"(cell types: {sorted(known)}); fix the name"
                )
    _check_channels(channels, names, rules, aliases)


def _check_rule(i: int, rule: RuleConfig, earlier_rules: Sequence[RuleConfig], markers: list[str]) -> None:
    """One rule: known markers, not contradictory, not empty, not shadowed by an earlier rule."""
    name = _rule_name(i, rule)
    for key in ("pos", "neg", "any"):
        for m in getattr(rule, key):
            if m not in markers:
                raise ConfigError(
                    f"{name}: {key} marker '{m}' is not under phenotypes.markers (gated markers: {markers}); "
                    "add it there or fix the rule"
                )
    both = sorted(set(rule.pos) & set(rule.neg))
    if both:
        raise ConfigError(f"{name} is contradictory: {both} must be both positive and negative; fix the rule")
    if rule.any and set(rule.any) <= set(rule.neg):
        raise ConfigError(
            f"{name} is contradictory: every 'any' marker {rule.any} is also in 'neg', so it never matches"
        )
    if not (rule.pos or rule.neg or rule.any):
        raise ConfigError(f"{name} has no markers; give pos, neg or any")
    for j, earlier in enumerate(earlier_rules):
        if _implies(rule, earlier):
            raise ConfigError(
                f"{name} never matches: every cell it selects is taken first by {_rule_name(j, earlier)} "
                "(first match wins); reorder the rules or make them exclusive"
            )


def _check_channels(
    channels: Sequence[str], markers: list[str], rules: Sequence[RuleConfig], aliases: Mapping[str, list[str]] | None
) -> None:
    """Every gated marker is a channel of the image (names the rules that use a missing one)."""
    from ..io import resolve_channels

    for m in markers:
        try:
            resolve_channels(list(channels), [m], aliases=aliases, source="image")
        except ChannelError:
            users = [_rule_name(i, r) for i, r in enumerate(rules) if m in (*r.pos, *r.neg, *r.any)]
            used = f" (used by {', '.join(users)})" if users else ""
            raise ConfigError(
                f"phenotypes.markers.{m}{used}: no channel '{m}' in the panel {list(channels)}; "
                "fix the marker name or map it with panel.aliases"
            ) from None


# ------------------------------------------------------------------------------------------ cell types
def _gets_flags(cell_type: str, receptor_cell_types: Sequence[str] | None, default_cell_type: str) -> bool:
    if receptor_cell_types is not None:
        return cell_type in set(receptor_cell_types)
    low = cell_type.lower()
    return cell_type != default_cell_type and not low.startswith(_NON_IMMUNE_PREFIXES)


def assign_cell_types(
    cells: pd.DataFrame,
    *,
    rules: Sequence[RuleConfig],
    receptors: Sequence[str] = (),
    receptor_cell_types: Sequence[str] | None = None,
    default_cell_type: str = "Other",
) -> pd.DataFrame:
    """Add ``cell_type`` (first matching rule, else ``default_cell_type``) and ``phenotype``.

    Parameters
    ----------
    cells : DataFrame
        With the ``{marker}_pos`` columns of every marker the rules and receptors name.
    rules : sequence of RuleConfig
        ``phenotypes.rules``, tried in order: the first whose ``pos`` markers are all positive, no ``neg``
        marker positive and at least one ``any`` marker positive names the cell type.
    receptors : sequence of str
        ``phenotypes.receptors``: flags appended to ``phenotype`` in this order.
    receptor_cell_types : sequence of str, optional
        Cell types that get receptor flags; None = every cell type except ``default_cell_type`` and those
        whose name starts with "tumor" or "stroma" (case-insensitive).
    default_cell_type : str
        Cell type of cells that no rule matches.

    Returns
    -------
    DataFrame
        A copy with ``cell_type`` and ``phenotype`` (cell type + ``" {receptor}+"`` for each positive
        receptor, for cell types that get flags; see the package notes).

    Raises
    ------
    MissingStepError
        A ``{marker}_pos`` column is missing (run :func:`apply_gates`).

    Examples
    --------
    >>> import pandas as pd
    >>> from chemozone.config import RuleConfig
    >>> rules = [RuleConfig(cell_type="T", pos=["CD3"])]
    >>> df = pd.DataFrame({"CD3_pos": [True, True, False], "CXCR3_pos": [True, False, True]})
    >>> assign_cell_types(df, rules=rules, receptors=["CXCR3"])["phenotype"].tolist()
    ['T CXCR3+', 'T', 'Other']
    """
    needed = sorted({m for r in rules for m in (*r.pos, *r.neg, *r.any)} | set(receptors))
    require_columns(cells, [f"{m}_pos" for m in needed], "cells table", "chemozone.phenotype.apply_gates")
    n = len(cells)
    pos = {m: cells[f"{m}_pos"].to_numpy(dtype=bool) for m in needed}
    cell_type = np.full(n, default_cell_type, dtype=object)
    free = np.ones(n, dtype=bool)
    for rule in rules:
        hit = free.copy()
        for m in rule.pos:
            hit &= pos[m]
        for m in rule.neg:
            hit &= ~pos[m]
        if rule.any:
            hit &= np.logical_or.reduce([pos[m] for m in rule.any])
        cell_type[hit] = rule.cell_type
        free &= ~hit
    phenotype = cell_type.copy()
    if receptors:
        types = pd.unique(cell_type)
        flagged = [t for t in types if _gets_flags(str(t), receptor_cell_types, default_cell_type)]
        flag_rows = np.isin(cell_type, flagged)
        suffix = np.full(n, "", dtype=object)
        for r in receptors:
            suffix = np.where(pos[r] & flag_rows, suffix + f" {r}+", suffix)
        phenotype = (pd.Series(cell_type, dtype=object) + pd.Series(suffix, dtype=object)).to_numpy(dtype=object)
    out = cells.copy()
    out["cell_type"] = pd.Series(cell_type, index=cells.index, dtype=object)
    out["phenotype"] = pd.Series(phenotype, index=cells.index, dtype=object)
    return out


def phenotype_cells(
    cells: pd.DataFrame,
    gates: pd.DataFrame,
    *,
    markers: Mapping[str, MarkerConfig],
    rules: Sequence[RuleConfig],
    receptors: Sequence[str] = (),
    receptor_cell_types: Sequence[str] | None = None,
    default_cell_type: str = "Other",
) -> pd.DataFrame:
    """:func:`apply_gates` then :func:`assign_cell_types` (same keywords): ``{marker}_pos``, ``cell_type``,
    ``phenotype``."""
    return assign_cell_types(
        apply_gates(cells, gates, markers=markers),
        rules=rules,
        receptors=receptors,
        receptor_cell_types=receptor_cell_types,
        default_cell_type=default_cell_type,
    )
