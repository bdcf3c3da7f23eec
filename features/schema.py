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
    "impression",
    "click",
    "view",
    "like",
    "review",
    "cart",
    "purchase",
    "share",
)
# Interactions that count as a positive signal by default (labels, I2I positives, sessions' "valid
# clicks" use this set unless a job says otherwise).
POSITIVE_EVENT_TYPES: tuple[str, ...] = ("click", "like", "cart", "purchase", "share")

EVENT_REQUIRED = ("user_id", "item_id", "event_type", "ts")
EVENT_OPTIONAL = ("dwell_ms",)
ITEM_REQUIRED = ("item_id", "title", "category")
ITEM_OPTIONAL = ("text", "brand", "price", "image_path", "created_ts")

# Quarantine reason codes, in the order they are checked; a row's `reason` is the first that applies,
# `reasons` lists all of them. Each comes with an example input (docs/reference/tables.md lists them from here).
EVENT_REASONS = {
    "NULL_KEY": (
        "user_id, item_id, event_type or ts is missing or blank after normalization",
        "user_id = '\\u00a0\\u200b' (a no-break and a zero-width space)",
    ),
    "ID_TOO_LONG": ("user_id or item_id longer than --max-id-length characters", "item_id = 'x' * 10_000"),
    "BAD_TIMESTAMP": (
        "ts present but not an instant: unparseable, NaN, infinite, beyond year 9999",
        "ts = 'yesterday', NaN, 1e300, '99999999999999999999999'",
    ),
    "IMPLAUSIBLE_TIMESTAMP": (
        "ts before --min-ts or at/after --max-ts",
        "ts = '0001-01-01', 0, '20250630' (as seconds)",
    ),
    "UNKNOWN_EVENT_TYPE": ("event_type not in the vocabulary (after --event-type-map)", "event_type = 'hover'"),
    "FUTURE_TIMESTAMP": (
        "ts at or after the end of the as-of date (a later date's load publishes it)",
        "ts = '1998-05-01T00:00:00Z' in a load for 1998-04-30",
    ),
    "BAD_DWELL": (
        "dwell_ms present but not a number of ms in [0, --max-dwell-ms]: NaN, infinite, too large",
        "dwell_ms = 'NaN', 'Infinity', 1e19, '12 s'",
    ),
    "NEGATIVE_DWELL": ("dwell_ms < 0", "dwell_ms = -5"),
    "ORPHAN_ITEM": ("item_id not in the item catalog as of the date", "item_id = 'i-never-listed'"),
    "DUPLICATE": ("a second copy of an event (user, item, event_type, ts) within the load", "the same row twice"),
}
ITEM_REASONS = {
    "NULL_KEY": ("item_id missing or blank after normalization", "item_id = '\\t'"),
    "ID_TOO_LONG": ("item_id longer than --max-id-length characters", "item_id = 'x' * 10_000"),
    "NULL_TITLE": ("title missing or blank", "title = None, '   '"),
    "BAD_PRICE": ("price present but not a finite number >= 0", "price = 'NaN', -1, 'Infinity', 'cheap'"),
    "BAD_TIMESTAMP": ("created_ts present but not an instant", "created_ts = 'soon'"),
    "IMPLAUSIBLE_TIMESTAMP": ("created_ts before --min-ts or at/after --max-ts", "created_ts = '1900-01-01'"),
    "DUPLICATE": ("another row of the same item_id saying the same thing", "the same row twice"),
    "CONFLICTING_DUPLICATE": (
        "another row of the same item_id that differs (`detail` names the columns); "
        "the kept copy is the smallest raw row",
        "item 'i1' listed at price 5 and at 7",
    ),
}


def reasons_table() -> str:
    """Markdown: every quarantine reason with what it means and an example input."""
    rows = ["| table | reason | when | example input |", "|---|---|---|---|"]
    for table, reasons in (("events_quarantine", EVENT_REASONS), ("items_quarantine", ITEM_REASONS)):
        rows += [f"| {table} | `{r}` | {when} | {ex} |" for r, (when, ex) in reasons.items()]
    return "\n".join(rows)


class SchemaDriftError(ValueError):
    """The input lacks required columns (missing, or renamed without a mapping)."""


@dataclass(frozen=True)
class ColumnMapping:
    """canonical column name → source column name (identity for names not listed)."""

    mapping: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | list[str] | None) -> ColumnMapping:
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


def check_columns(columns: list[str], required: tuple[str, ...], mapping: ColumnMapping, what: str) -> None:
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
