"""One notion of time: absolute UTC instants, whatever the host's time zone.

Spark timestamps are instants (microseconds since the epoch), but two conversions between Python
and Spark silently use the *process's* local time zone rather than the session's:

- ``F.lit(<naive datetime>)`` goes through py4j's converter, which calls ``time.mktime`` (local
  time), so on a host with ``TZ=America/Los_Angeles`` a cutoff of "1998-03-02 00:00" moves to
  08:00 UTC;
- ``df.first()`` / ``collect()`` turn a timestamp into a naive *local* ``datetime``.

So nothing here hands Spark a ``datetime``: literals are built from epoch microseconds
(:func:`ts_lit`), instants read back are read as epoch microseconds (:func:`collect_instant`), and
naive datetimes given to a transform are taken to be UTC (:func:`utc`). Dates are days since the
epoch (:func:`utc_date_col`), never a cast through the session time zone.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the pure-Python helpers import without pyspark (the DAG files use them)
    from pyspark.sql import Column, DataFrame

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MICROS_PER_DAY = 86_400_000_000


def utc(t: dt.datetime) -> dt.datetime:
    """The instant as an aware UTC datetime; a naive datetime is read as UTC (never local time)."""
    if not isinstance(t, dt.datetime):
        raise TypeError(f"expected a datetime, got {type(t).__name__}")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def day_end(day: dt.date) -> dt.datetime:
    """The exclusive end of a UTC calendar day: day + 1, 00:00 UTC (aware)."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=UTC)


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=UTC)


def epoch_micros(t: dt.datetime) -> int:
    """Microseconds since the epoch of the instant (exact: integer arithmetic, no float)."""
    d = utc(t) - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_micros(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=int(us))


def ts_lit(t: dt.datetime) -> Column:
    """A Spark timestamp literal for the instant, independent of TZ and the session time zone."""
    from pyspark.sql import functions as F

    return F.timestamp_micros(F.lit(epoch_micros(t)))


def utc_date_col(ts: Column | str) -> Column:
    """The UTC calendar date of a timestamp column (days since the epoch: no time zone involved)."""
    from pyspark.sql import functions as F

    c = F.col(ts) if isinstance(ts, str) else ts
    return F.date_from_unix_date(F.floor(F.unix_micros(c) / F.lit(MICROS_PER_DAY)).cast("int"))


def utc_hour_col(ts: Column | str) -> Column:
    """Hour of day (0..23) in UTC, whatever the session time zone."""
    from pyspark.sql import functions as F

    c = F.col(ts) if isinstance(ts, str) else ts
    return F.pmod(F.floor(F.unix_micros(c) / F.lit(3_600_000_000)), F.lit(24)).cast("int")


def utc_dow_col(ts: Column | str) -> Column:
    """Day of week in UTC as Spark's ``dayofweek`` numbers it (1 = Sunday .. 7 = Saturday); the
    epoch, 1970-01-01, was a Thursday (5)."""
    from pyspark.sql import functions as F

    c = F.col(ts) if isinstance(ts, str) else ts
    days = F.floor(F.unix_micros(c) / F.lit(MICROS_PER_DAY))
    return (F.pmod(days + F.lit(4), F.lit(7)) + F.lit(1)).cast("int")


def collect_instant(df: DataFrame, agg: Column) -> dt.datetime | None:
    """One timestamp aggregate (e.g. ``F.min("ts")``) read back as an aware UTC datetime."""
    from pyspark.sql import functions as F

    row = df.agg(F.unix_micros(agg)).first()
    v = None if row is None else row[0]
    return None if v is None else from_micros(v)
