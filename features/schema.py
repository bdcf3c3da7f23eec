"""Canonical input schema: events and items, the event-type vocabulary, column mapping.

events(user_id, item_id, event_type, ts, dwell_ms?, context...)
items(item_id, title, text?, category, brand?, price?, image_path?, created_ts?, attributes...)

Foreign schemas are mapped onto these names by a ``ColumnMapping`` (canonical name → source
column). Columns of the source that are not canonical are kept: for events in a
``context map<string,string>``, for items in ``attributes map<string,string>``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

# Event types every job understands. `impression` is an exposure, the rest are interactions.
EVENT_TYPES: tuple[str, ...] = (
    "impression", "click", "view", "like", "review", "cart", "purchase", "share",
)
# Interactions that count as a positive signal by default (labels, I2I positives, sessions' "valid
# clicks" use this set unless a job says otherwise).
POSITIVE_EVENT_TYPES: tuple[str, ...] = ("click", "like", "cart", "purchase", "share")

EVENT_REQUIRED = ("user_id", "item_id", "event_type", "ts")
EVENT_OPTIONAL = ("dwell_ms",)
ITEM_REQUIRED = ("item_id", "title", "category")
ITEM_OPTIONAL = ("text", "brand", "price", "image_path", "created_ts")

# Quarantine reason codes, in the order they are checked; a row's `reason` is the first that applies,
# `reasons` lists all of them.
EVENT_REASONS = (
    "NULL_KEY",            # user_id, item_id, event_type or ts is null/empty
    "BAD_TIMESTAMP",       # ts present but unparseable
    "UNKNOWN_EVENT_TYPE",  # event_type not in the vocabulary (after the mapping)
    "FUTURE_TIMESTAMP",    # ts at or after the end of the as-of date
    "BAD_DWELL",           # dwell_ms present but not a number
    "NEGATIVE_DWELL",      # dwell_ms < 0
    "ORPHAN_ITEM",         # item_id not in the item catalog
    "DUPLICATE",           # same (user, item, event_type, ts) as an earlier-kept event
)
ITEM_REASONS = ("NULL_KEY", "BAD_PRICE", "BAD_TIMESTAMP", "DUPLICATE")


class SchemaDriftError(ValueError):
    """The input lacks required columns (missing, or renamed without a mapping)."""


@dataclass(frozen=True)
class ColumnMapping:
    """canonical column name → source column name (identity for names not listed)."""

    mapping: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | list[str] | None) -> "ColumnMapping":
        """'user_id=uid,item_id=movie_id' (or a list of 'a=b') → ColumnMapping."""
        if not spec:
            return cls({})
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        out = {}
        for part in parts:
            if "=" not in part:
                raise ValueError(f"column mapping entry {part!r} is not canonical=source")
            k, v = (x.strip() for x in part.split("=", 1))
            out[k] = v
        return cls(out)

    def source(self, canonical: str) -> str:
        return self.mapping.get(canonical, canonical)

    def values_as(self, cast):
        """The mapping with its values converted, e.g. 'click=200,cart=50' → {'click': 200, 'cart': 50}."""
        return {k: cast(v) for k, v in self.mapping.items()}


def check_columns(
    columns: list[str], required: tuple[str, ...], mapping: ColumnMapping, what: str
) -> None:
    """Fail fast, naming every missing column and the closest source columns."""
    missing = [c for c in required if mapping.source(c) not in columns]
    if not missing:
        return
    used = {mapping.source(c) for c in required}
    unmapped = [c for c in columns if c not in used]
    hints = []
    for c in missing:
        src = mapping.source(c)
        close = difflib.get_close_matches(src, unmapped, n=2, cutoff=0.5)
        hint = f"{c!r}" + (f" (looked for source column {src!r})" if src != c else "")
        if close:
            hint += f" — did you mean {', '.join(map(repr, close))}? map it with {c}={close[0]}"
        hints.append(hint)
    raise SchemaDriftError(
        f"{what} input is missing required column(s): {'; '.join(hints)}. "
        f"Columns present but not mapped: {', '.join(unmapped) or 'none'}"
    )
