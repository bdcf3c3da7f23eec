"""Benchmark helpers (used by `make bench`): where results go, and peak memory of the process tree."""

from __future__ import annotations

import threading
from pathlib import Path

SIZES = {"small": 100_000, "1m": 1_000_000, "10m": 10_000_000}
OUT = Path(__file__).resolve().parents[2] / "docs" / "bench"


class PeakRSS:
    """Peak resident memory of this process and (children=True) its children — the Spark JVM —
    sampled at 5 Hz."""

    def __init__(self, children: bool = True):
        self.peak = 0
        self.children = children
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil  # ships with ray[default]; only the benchmarks need it

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me, *me.children(recursive=True)] if self.children else [me]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
