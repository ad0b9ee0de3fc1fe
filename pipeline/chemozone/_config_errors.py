"""How config problems read: pydantic errors as one line naming the YAML path, and keys that moved.

``format_validation_error`` turns a pydantic ``ValidationError`` into ``zones[1].smooth_um: must be > 0, got -3``;
``move_deprecated_keys`` maps keys of earlier versions to their new place with a ``DeprecationWarning``
(``tissue.grid_um`` → ``analysis_grid.pixel_size_um``). Used by :func:`chemozone.config.config_from_dict`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .errors import ConfigError

__all__ = ["format_validation_error", "move_deprecated_keys"]


# --------------------------------------------------------------------------------- error formatting
def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "float", "int", "str", "bool", "list", "dict")):
            continue  # union-member tags added by pydantic, not part of the YAML path
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx", {}) or {}
    got = err.get("input")
    ops = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in ops:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {ops[kind]} {bound}, got {got!r}"
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against configs/example.yaml)"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {got!r}"


def format_validation_error(exc: ValidationError, source: str) -> str:
    seen: list[str] = []
    for err in exc.errors():
        line = f"{_loc_to_path(err['loc'])}: {_describe(err)}"
        if line not in seen:
            seen.append(line)
    more = f" (and {len(seen) - 1} more: {'; '.join(seen[1:])})" if len(seen) > 1 else ""
    return f"{source}: {seen[0]}{more}"


# ---------------------------------------------------------------------------------- deprecated keys
def move_deprecated_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``tissue.grid_um`` (before 0.2) → ``analysis_grid.pixel_size_um``, with a DeprecationWarning."""
    tissue = data.get("tissue")
    if not isinstance(tissue, dict) or "grid_um" not in tissue:
        return data
    import warnings

    data = {**data, "tissue": {k: v for k, v in tissue.items() if k != "grid_um"}}
    grid = data.get("analysis_grid")
    grid = dict(grid) if isinstance(grid, dict) else {}
    if "pixel_size_um" in grid and grid["pixel_size_um"] != tissue["grid_um"]:
        raise ConfigError(
            f"{source}: tissue.grid_um ({tissue['grid_um']}) and analysis_grid.pixel_size_um "
            f"({grid['pixel_size_um']}) disagree; keep only analysis_grid.pixel_size_um"
        )
    warnings.warn(
        f"{source}: tissue.grid_um is deprecated; the analysis grid governs tissue, zones and distances: "
        "write it as analysis_grid.pixel_size_um",
        DeprecationWarning,
        stacklevel=3,
    )
    grid["pixel_size_um"] = tissue["grid_um"]
    data["analysis_grid"] = grid
    return data
