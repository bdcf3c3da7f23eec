"""Reading the factory's tables from a trainer: ``recfactory.tables``.

    from recfactory import tables
    t = tables.read("s3://bucket/warehouse", "training_samples", "2026-11-30")
    t.version, t.run_id                    # what was resolved
    t.to_pandas(); t.to_arrow(); t.to_ray(); t.to_torch(batch_size=4096)

"Table T for date D" is the version of T that the latest *succeeded* run for D of the job that
writes T published (its ``_runs`` row names it), read at exactly that version (Delta time travel)
and restricted to the date's partition — never simply the newest version, which may hold a later
rerun still in progress or a killed attempt's partial write. No Spark: delta-rs and pyarrow only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recfactory.jobs.runtime.env import arrow_uri, normalize_warehouse, validate_table_name  # no pyspark
from recfactory.jobs.runtime.publication import NotPublishedError

__all__ = ["NotPublishedError", "Published", "read"]


@dataclass(frozen=True)
class Published:
    """One table's publication for one date."""

    warehouse: str
    table: str
    as_of: dt.date
    version: int
    run_id: str
    job: str

    def _dataset(self):
        from deltalake import DeltaTable

        return DeltaTable(arrow_uri(self.warehouse, self.table), version=self.version).to_pyarrow_dataset()

    def _filter(self, ds):
        import pyarrow.compute as pc

        if "ds" not in ds.schema.names:
            return None
        # events_clean is partitioned by event date: "as of D" is every event dated up to D
        op = pc.field("ds") <= self.as_of if self.table == "events_clean" else pc.field("ds") == self.as_of
        return op

    def to_arrow(self, columns: list[str] | None = None):
        ds = self._dataset()
        return ds.to_table(columns=columns, filter=self._filter(ds))

    def to_pandas(self, columns: list[str] | None = None):
        return self.to_arrow(columns).to_pandas()

    def batches(self, batch_size: int = 65_536, columns: list[str] | None = None) -> Iterator[Any]:
        ds = self._dataset()
        yield from ds.to_batches(columns=columns, filter=self._filter(ds), batch_size=batch_size)

    def to_ray(self, columns: list[str] | None = None):
        """A Ray Dataset of the publication."""
        import ray

        return ray.data.from_arrow(self.to_arrow(columns))

    def to_torch(self, batch_size: int = 4096, columns: list[str] | None = None):
        """A torch ``IterableDataset`` yielding dicts of column → tensor (numeric columns) or list,
        ``batch_size`` rows at a time."""
        return _make_torch_class()(self, batch_size, columns)


def _make_torch_class():
    import torch
    from torch.utils.data import IterableDataset

    class TorchBatches(IterableDataset):
        def __init__(self, pub: Published, batch_size: int, columns):
            self.pub, self.batch_size, self.columns = pub, batch_size, columns

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            for i, b in enumerate(self.pub.batches(self.batch_size, self.columns)):
                if info is not None and i % info.num_workers != info.id:
                    continue  # each DataLoader worker its own share of batches
                out = {}
                for name, col in zip(b.schema.names, b.columns, strict=True):
                    arr = col.to_numpy(zero_copy_only=False)
                    out[name] = torch.tensor(arr) if arr.dtype.kind in "biuf" else arr.tolist()
                yield out

    return TorchBatches


def _producers(table: str) -> list[str] | None:
    """The jobs that write the table (None when the jobs cannot be imported: no pyspark here)."""
    try:
        from recfactory.jobs.runtime.job import JOBS, load_job

        return [j for j in JOBS if table in load_job(j).outputs]
    except ImportError:
        return None


def read(warehouse: str, table: str, as_of: dt.date | str) -> Published:
    """The publication of ``table`` for ``as_of``: the version named by the latest succeeded run
    of its job for that date (NotPublishedError naming the job when there is none)."""
    from recfactory.jobs.runtime.publication import read_runs, resolve_for_date

    root = normalize_warehouse(warehouse)
    validate_table_name(table)
    day = dt.date.fromisoformat(str(as_of))
    runs = read_runs(root)
    if not runs:
        raise NotPublishedError(f"no runs recorded under {root}")
    try:
        return Published(root, table, day, *resolve_for_date(root, table, day, runs))
    except NotPublishedError:
        jobs = _producers(table)  # only now: it imports every job (and pyspark)
        if jobs == []:
            raise ValueError(f"no recfactory job writes a table {table!r}") from None
        raise NotPublishedError(
            f"{table} has no publication for {day}: run {' or '.join(jobs or ['its job'])} for that date"
        ) from None
