"""The result line of a test's child interpreter: a child prints ``RESULT <json>`` once; whatever
else reaches its stdout (Ray forwards its workers' output to the driver) is not mistaken for it."""

from __future__ import annotations

import json

PREFIX = "RESULT "


def result_of(stdout: str):
    lines = [line for line in stdout.splitlines() if line.startswith(PREFIX)]
    assert len(lines) == 1, f"expected one {PREFIX!r} line in the child's stdout:\n{stdout[-3000:]}"
    return json.loads(lines[0][len(PREFIX) :])
