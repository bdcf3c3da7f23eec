"""Hostile input and configuration: no input value fails a load, no parameter runs as code.

- a property-based test (hypothesis) over generated hostile rows of every column, string-typed and
  numerically typed: validation never raises, clean + quarantined = input, every quarantined row
  has a reason, every clean row satisfies the schema's invariants, and IDs are normalized exactly as
  a plain-Python reference does it;
- ingest on a table holding one row per quarantine reason (each reason counted as planted).

Filters, plug-in class paths and run-conf overrides (parsed as data, never evaluated): test_no_code.py.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import unicodedata

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfactory.features.schema import EVENT_REASONS, EVENT_TYPES, ITEM_REASONS

CUTOFF = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)  # the end of 2025-06-30
EXAMPLES = int(os.environ.get("RECFACTORY_HYPOTHESIS_EXAMPLES", "30"))

# -- a plain-Python reference of ID normalization ------------------------------------------------
# Java's \s, \p{Z} (separators) and \p{Cc} (controls) trimmed at the ends, \p{Cf} (format) removed
# everywhere, NFC. The alphabet below keeps to characters whose categories Java 17 and Python agree on.
JAVA_SPACE = set(" \t\n\x0b\f\r")


def reference_id(raw: str | None) -> str | None:
    if raw is None:
        return None
    s = "".join(ch for ch in raw if unicodedata.category(ch) != "Cf")

    def edge(ch):
        return ch in JAVA_SPACE or unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc")

    lo, hi = 0, len(s)
    while lo < hi and edge(s[lo]):
        lo += 1
    while hi > lo and edge(s[hi - 1]):
        hi -= 1
    s = unicodedata.normalize("NFC", s[lo:hi])
    return s or None


ID_CHARS = list("abcXYZ019_-.:/") + [
    "é",
    "e\u0301",
    "ß",
    "用",
    "Å",
    "A\u030a",
    "\u00a0",
    "\u2003",
    "\u3000",
    "\u2028",
    "\t",
    "\n",
    " ",
    "\x00",
    "\x1f",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u202e",
    "\u00ad",
]
# plausible values most of the time (so rows reach the later checks), hostile ones often enough
plain_ids = st.sampled_from(["u1", "u2", "i1", "i2", "42"])
ids = st.one_of(
    plain_ids,
    plain_ids,
    plain_ids,
    st.none(),
    st.lists(st.sampled_from(ID_CHARS), max_size=12).map("".join),
    st.sampled_from([" u1 ", "\u200bu1", "u1\u00a0", "e\u0301", "x" * 300]),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1).map(float),
    st.sampled_from([0.0, -1.0, 1.75e9, 1.75e12, 1.75e15, 1.75e18, 1e19, 1e300, 86_400_001.0]),
)
number_text = st.one_of(
    numbers.map(repr),
    st.sampled_from(
        [
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "inf",
            "1e19",
            "99999999999999999999999",
            "-0",
            "  42 ",
            "",
            " ",
            "12 s",
            "0x10",
            "1_000",
        ]
    ),
)
good_ts = st.sampled_from(
    ["2025-06-30T10:00:00Z", "2025-06-29 08:00:00", "1751277600", "1751277600000", "2025-06-30T23:59:59.999999Z"]
)
ts_text = st.one_of(
    good_ts,
    good_ts,
    number_text,
    st.sampled_from(
        [
            "2025-06-30T23:59:59.999999Z",
            "2025-07-01T00:00:00Z",
            "2025-06-30 10:00:00",
            "0001-01-01",
            "1969-12-31",
            "9999-12-31T23:59:59Z",
            "+294247-01-10T04:00:54Z",
            "2025-02-30",
            "20250630",
            "yesterday",
            "\u200b2025-06-30",
        ]
    ),
)
event_types = st.one_of(
    st.sampled_from(EVENT_TYPES),
    st.sampled_from(EVENT_TYPES),
    st.none(),
    st.sampled_from(["CLICK", " click ", "hover", "", "\u00a0"]),
)
good_numbers = st.one_of(st.integers(0, 600_000).map(float), st.sampled_from([1.75e9, 1.7512776e12]))


@st.composite
def event_tables(draw):
    typed = draw(st.booleans())  # ts and dwell as doubles, or everything as text
    n = draw(st.integers(1, 14))
    rows = []
    for _ in range(n):
        rows.append(
            (
                draw(ids),
                draw(ids),
                draw(event_types),
                draw(st.one_of(good_numbers, numbers)) if typed else draw(st.one_of(ts_text, ts_text, st.none())),
                draw(st.one_of(st.none(), good_numbers, numbers))
                if typed
                else draw(st.one_of(st.none(), good_numbers.map(repr), number_text)),
                draw(st.one_of(st.none(), st.text(max_size=8))),
            )
        )
    if draw(st.booleans()) and rows:  # an exact copy: a DUPLICATE
        rows.append(rows[0])
    return typed, rows


@st.composite
def item_tables(draw):
    typed = draw(st.booleans())
    n = draw(st.integers(1, 10))
    rows = []
    for _ in range(n):
        price = draw(st.one_of(st.none(), numbers)) if typed else draw(st.one_of(st.none(), number_text))
        rows.append(
            (
                draw(st.one_of(ids, st.sampled_from(["i1", "i1 ", "\u200bi1"]))),
                draw(
                    st.one_of(
                        st.sampled_from(["Title", "Dress"]), st.none(), st.sampled_from(["", " ", "\u3000", "T\u200b"])
                    )
                ),
                draw(st.one_of(st.none(), st.sampled_from(["c", ""]))),
                price,
                draw(st.one_of(st.none(), ts_text)),
            )
        )
    return typed, rows


def _check_ids(clean: pd.DataFrame, col: str, max_len: int = 256):
    for v in clean[col]:
        assert v is not None and v != "" and len(v) <= max_len
        assert v == unicodedata.normalize("NFC", v) and reference_id(v) == v, repr(v)


TALLY = os.environ.get("RECFACTORY_HYPOTHESIS_TALLY")  # a JSON file: what the generated rows produced


def _tally(kind: str, out: pd.DataFrame) -> None:
    """With RECFACTORY_HYPOTHESIS_TALLY set, add this example's outcome (rows per first reason) to
    the file, so a run can say how many hostile rows were tried and what each produced."""
    if not TALLY:
        return
    import json
    from pathlib import Path

    path = Path(TALLY)
    data = json.loads(path.read_text()) if path.exists() else {}
    t = data.setdefault(kind, {"examples": 0, "rows": 0, "outcome": {}})
    t["examples"] += 1
    t["rows"] += len(out)
    for r in out["reason"].fillna("clean"):
        t["outcome"][r] = t["outcome"].get(r, 0) + 1
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _property(strategy, examples: int):
    """A hypothesis test over ``strategy``: ``examples`` deterministic examples (the CI test command
    runs RECFACTORY_HYPOTHESIS_EXAMPLES, default 30, about a minute each; `make bench` 300)."""

    def wrap(body):
        return settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )(given(table=strategy)(body))

    return wrap


def events_property(spark, table):
    from recfactory.features.instants import epoch_micros
    from recfactory.features.validation import DEFAULT_MAX_DWELL_MS, DEFAULT_MIN_TS, EventRules, validate_events

    typed, rows = table
    kind = "double" if typed else "string"
    df = spark.createDataFrame(
        rows, f"user_id string, item_id string, event_type string, ts {kind}, dwell_ms {kind}, note string"
    )
    ann = validate_events(df, EventRules(cutoff=CUTOFF))  # one Spark job per example: one collect
    out = ann.selectExpr(
        "user_id", "item_id", "event_type", "dwell_ms", "event_id", "reasons", "reason", "unix_micros(ts) AS us"
    ).toPandas()
    _tally("events", out)
    ok = out["reasons"].map(len) == 0
    assert len(out) == len(rows)  # clean + quarantined = input
    assert out.loc[~ok, "reason"].notna().all()
    assert out.loc[~ok, "reasons"].map(lambda r: set(r) <= set(EVENT_REASONS)).all()
    good = out[ok]
    _check_ids(good, "user_id")
    _check_ids(good, "item_id")
    assert good["event_type"].isin(EVENT_TYPES).all()
    assert good["event_id"].is_unique
    assert good["dwell_ms"].map(lambda d: pd.isna(d) or 0 <= d <= DEFAULT_MAX_DWELL_MS).all()
    assert good["us"].between(epoch_micros(DEFAULT_MIN_TS), epoch_micros(CUTOFF) - 1).all()
    # the IDs of every row (clean or not) are the reference normalization of the input
    ref = sorted(repr((reference_id(r[0]), reference_id(r[1]))) for r in rows)
    assert ref == sorted(repr((u, i)) for u, i in zip(out["user_id"], out["item_id"], strict=True))


def items_property(spark, table):
    from recfactory.features.validation import validate_items

    typed, rows = table
    kind = "double" if typed else "string"
    df = spark.createDataFrame(rows, f"item_id string, title string, category string, price {kind}, created_ts string")
    ann = validate_items(df)
    out = ann.select("item_id", "title", "price", "reasons", "reason", "detail").toPandas()
    _tally("items", out)
    assert len(out) == len(rows)
    ok = out["reasons"].map(len) == 0
    assert out.loc[~ok, "reason"].notna().all()
    assert out.loc[~ok, "reasons"].map(lambda r: set(r) <= set(ITEM_REASONS)).all()
    good = out[ok]
    _check_ids(good, "item_id")
    assert good["item_id"].is_unique and good["title"].notna().all()
    assert (
        good["price"]
        .map(lambda p: p is None or (isinstance(p, float) and math.isfinite(p) and p >= 0) or pd.isna(p))
        .all()
    )
    conflicts = out[out["reason"] == "CONFLICTING_DUPLICATE"]
    assert conflicts["detail"].str.startswith("differs from the kept copy in ").all()
    # every valid item id has a kept copy
    valid = out[out["reasons"].map(lambda r: len(r) == 0 or r[0] in ("DUPLICATE", "CONFLICTING_DUPLICATE"))]
    assert set(valid["item_id"]) == set(good["item_id"])


test_no_event_row_fails_validation_and_every_row_is_accounted_for = pytest.mark.spark(
    _property(event_tables(), EXAMPLES)(events_property)
)
test_no_item_row_fails_validation_and_one_copy_of_each_item_is_kept = pytest.mark.spark(
    _property(item_tables(), EXAMPLES)(items_property)
)
test_many_more_hostile_event_rows = pytest.mark.slow(pytest.mark.spark(_property(event_tables(), 300)(events_property)))
test_many_more_hostile_item_rows = pytest.mark.slow(pytest.mark.spark(_property(item_tables(), 300)(items_property)))


# -- one row per reason, through the ingest job --------------------------------------------------

EVENTS = [  # (user_id, item_id, event_type, ts, dwell_ms) → the reason planted
    (("u1", "i1", "click", "2025-06-30T10:00:00Z", "1500"), None),
    (("\u00a0u2\u200b", "i1", "CLICK", "1751277600", None), None),  # normalized, clean
    (("\u00a0\u200b", "i1", "click", "2025-06-30T10:00:00Z", None), "NULL_KEY"),
    (("u3", "x" * 300, "click", "2025-06-30T10:00:00Z", None), "ID_TOO_LONG"),
    (("u4", "i1", "click", "yesterday", None), "BAD_TIMESTAMP"),
    (("u5", "i1", "click", "99999999999999999999999", None), "BAD_TIMESTAMP"),
    (("u6", "i1", "click", "0001-01-01", None), "IMPLAUSIBLE_TIMESTAMP"),
    (("u7", "i1", "click", "20250630", None), "IMPLAUSIBLE_TIMESTAMP"),
    (("u8", "i1", "hover", "2025-06-30T10:00:00Z", None), "UNKNOWN_EVENT_TYPE"),
    (("u9", "i1", "click", "2025-07-01T00:00:00Z", None), "FUTURE_TIMESTAMP"),
    (("u10", "i1", "click", "2025-06-30T10:00:00Z", "NaN"), "BAD_DWELL"),
    (("u11", "i1", "click", "2025-06-30T10:00:00Z", "Infinity"), "BAD_DWELL"),
    (("u12", "i1", "click", "2025-06-30T10:00:00Z", "1e19"), "BAD_DWELL"),
    (("u13", "i1", "click", "2025-06-30T10:00:00Z", "-5"), "NEGATIVE_DWELL"),
    (("u14", "i-never-listed", "click", "2025-06-30T10:00:00Z", None), "ORPHAN_ITEM"),
    (("u1", "i1", "click", "2025-06-30T10:00:00Z", "1500"), "DUPLICATE"),
]
ITEMS = [  # (item_id, title, category, price, created_ts)
    (("i1", "Dress", "dresses", "5", None), None),
    (("i1", "Dress", "dresses", "5", None), "DUPLICATE"),
    (("i1", "Dress", "dresses", "7", None), "CONFLICTING_DUPLICATE"),
    (("\t", "Hat", "hats", None, None), "NULL_KEY"),
    (("y" * 300, "Hat", "hats", None, None), "ID_TOO_LONG"),
    (("i2", "  ", "hats", None, None), "NULL_TITLE"),
    (("i3", "Boot", "boots", "NaN", None), "BAD_PRICE"),
    (("i4", "Boot", "boots", "-1", None), "BAD_PRICE"),
    (("i5", "Boot", "boots", None, "soon"), "BAD_TIMESTAMP"),
    (("i6", "Boot", "boots", None, "1900-01-01"), "IMPLAUSIBLE_TIMESTAMP"),
]


@pytest.mark.spark
def test_ingest_quarantines_each_planted_reason_and_never_fails_on_a_value(spark, tmp_path):
    from deltalake import DeltaTable

    from recfactory.jobs.runtime.job import run_job

    ev, it = tmp_path / "events.parquet", tmp_path / "items.parquet"
    pd.DataFrame([r for r, _ in EVENTS], columns=["user_id", "item_id", "event_type", "ts", "dwell_ms"]).to_parquet(ev)
    pd.DataFrame([r for r, _ in ITEMS], columns=["item_id", "title", "category", "price", "created_ts"]).to_parquet(it)
    wh = str(tmp_path / "wh")
    ctx = run_job(
        "ingest",
        [
            "--warehouse",
            wh,
            "--as-of",
            "2025-06-30",
            "--dataset",
            "tables",
            "--events-path",
            str(ev),
            "--items-path",
            str(it),
            "--max-quarantine-fraction",
            "1",
        ],
        spark=spark,
    )
    rc = ctx.row_counts
    want = pd.Series([r for _, r in EVENTS if r]).value_counts().to_dict()
    assert {k[len("events_quarantine.") :]: v for k, v in rc.items() if k.startswith("events_quarantine.")} == want
    want_items = pd.Series([r for _, r in ITEMS if r]).value_counts().to_dict()
    assert {k[len("items_quarantine.") :]: v for k, v in rc.items() if k.startswith("items_quarantine.")} == want_items
    assert set(want) | {"DUPLICATE"} >= set(EVENT_REASONS) - {"DUPLICATE"} and set(want_items) == set(ITEM_REASONS)
    assert rc["events_input"] == len(EVENTS) == rc["events_clean"] + rc["events_quarantine"]
    clean = DeltaTable(f"{wh}/events_clean").to_pandas()
    assert sorted(clean["user_id"]) == ["u1", "u2"] and set(clean["event_type"]) == {"click"}
    q = DeltaTable(f"{wh}/items_quarantine").to_pandas()
    assert q.loc[q["reason"] == "CONFLICTING_DUPLICATE", "detail"].tolist() == ["differs from the kept copy in price"]


# -- parameters are data --------------------------------------------------------------------------
