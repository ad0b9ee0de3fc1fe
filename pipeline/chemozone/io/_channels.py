"""Channel names: one canonical key per spelling, and the indices of wanted channels in an image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..errors import ChannelError

_OPAL_RE = re.compile(r"\s*\((?:opal|alexa|cy|fitc|dapi|af)[^)]*\)\s*$", re.IGNORECASE)


def normalize_channel_name(name: str) -> str:
    """Canonical key for matching channel spellings.

    Case, spaces, dashes, underscores and dots are ignored, as is a trailing fluorophore in
    parentheses (``"CD8 (Opal 520)"`` → ``"cd8"``).

    >>> normalize_channel_name("CD8 (Opal 520)") == normalize_channel_name("cd-8")
    True
    """
    base = _OPAL_RE.sub("", str(name))
    return re.sub(r"[\s_\-.]+", "", base).lower()


def resolve_channels(
    image_channels: Sequence[str],
    wanted: Sequence[str],
    *,
    aliases: dict[str, list[str]] | None = None,
    source: str | Path = "image",
) -> list[int]:
    """Indices of ``wanted`` channels in ``image_channels``.

    Matching is exact first, then by :func:`normalize_channel_name`, then through ``aliases``
    (``{canonical: [other spellings]}``).

    Raises
    ------
    ChannelError
        Names the missing channel, the file, and lists the image's channels.
    """
    exact = {c: i for i, c in enumerate(image_channels)}
    norm: dict[str, int] = {}
    for i, c in enumerate(image_channels):
        norm.setdefault(normalize_channel_name(c), i)
    out = []
    for w in wanted:
        if w in exact:
            out.append(exact[w])
            continue
        candidates = [w] + list((aliases or {}).get(w, []))
        for canon, alts in (aliases or {}).items():
            if w in alts:
                candidates += [canon] + list(alts)
        hit = next((norm[normalize_channel_name(c)] for c in candidates if normalize_channel_name(c) in norm), None)
        if hit is None:
            raise ChannelError(
                f"{source}: channel '{w}' not found; the image has channels {list(image_channels)}; "
                "fix the name in the config or map it with panel.aliases"
            )
        out.append(hit)
    return out



def canonical_channel_names(image_channels: Sequence[str], aliases: dict[str, list[str]] | None = None) -> list[str]:
    """The name the config uses for each image channel: an image channel spelled as one of ``aliases``
    (``{canonical: [other spellings]}``, ``panel.aliases``) gets the canonical name; others keep theirs.

    Per-cell tables name their columns this way (``CD3_cell`` for an image channel ``CD3e (Opal 570)``
    with ``aliases: {CD3: [CD3e]}``), so gates, rules and zones written with the config's names find them.

    Examples
    --------
    >>> canonical_channel_names(["DAPI", "CD3e (Opal 570)", "CD8 (Opal 520)"], {"CD3": ["CD3e"]})
    ['DAPI', 'CD3', 'CD8 (Opal 520)']
    """
    keys = {normalize_channel_name(s): canon for canon, alts in (aliases or {}).items() for s in alts}
    return [keys.get(normalize_channel_name(c), c) for c in image_channels]
