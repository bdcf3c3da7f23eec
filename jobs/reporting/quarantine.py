"""Quarantine: rows set aside per table and reason, and ingest's reconciliation of its counts."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from recfactory.jobs.reporting.html import Rendered, table
from recfactory.jobs.runtime.reports import pyplot

RECONCILED = (
    "events_input",
    "events_clean",
    "events_quarantine",
    "events_published",
    "events_republished",
    "events_already_published",
    "events_backdated",
    "items_input",
    "items",
    "items_not_yet_created",
    "items_quarantine",
)


def quarantine_section(
    tables: pd.DataFrame, reasons: pd.DataFrame, ingest_counts: dict | None, as_of: dt.date
) -> Rendered:
    """``tables``: table, rows (None when not built), note; ``reasons``: table, reason, rows;
    ``ingest_counts``: the row counts of the date's ingest run, when there is one."""
    out = Rendered().add(
        "<p>Rows set aside with a reason instead of being dropped, for the date's partition.</p>",
        table(tables.fillna({"rows": 0})),
    )
    if ingest_counts is not None:
        rc = ingest_counts
        keys = [k for k in RECONCILED if k in rc]
        out.add(
            "<h3>Ingest reconciliation</h3>",
            table(pd.DataFrame({"count": keys, "rows": [int(rc[k]) for k in keys]})),
        )
        if {"events_input", "events_clean", "events_quarantine"} <= set(rc):
            ok = rc["events_input"] == rc["events_clean"] + rc["events_quarantine"]
            out.add(f"<p>events: input = clean + quarantined: <b>{'yes' if ok else 'NO'}</b></p>")
        if rc.get("events_backdated"):
            out.add(
                f"<p>{int(rc['events_backdated']):,} events published for dates before "
                f"{as_of} (late arrivals or a history load): features already built "
                "for those dates did not see them; rebuild them to include them.</p>"
            )
    if not len(reasons):
        return out.add("<p>No row was quarantined for this date.</p>")
    rs = reasons.sort_values(["table", "rows"], ascending=[True, False])
    fig, ax = pyplot().subplots(figsize=(7, 0.3 * len(rs) + 1.2))
    labels = [f"{t}: {r}" for t, r in zip(rs["table"], rs["reason"], strict=True)]
    ax.barh(labels[::-1], rs["rows"].to_numpy()[::-1], color="#c44e52")
    ax.set(xlabel="rows", title="quarantine reasons")
    return out.figure("quarantine_reasons.png", fig, "quarantined rows by reason").add(table(rs))
