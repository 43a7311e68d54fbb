"""Pause points for crash tests: where a kill -9 hurts most, the process can be made to stop.

With ``AMEND_PAUSE_AT=<name>`` in the environment, the process reaching the pause point of
that name writes ``AMEND_PAUSE_FILE`` (JSON: the point, the pid, and what the caller adds,
e.g. a checksum of the weights at that moment) and sleeps until it is killed.  Without the
variable a pause point costs one dictionary lookup.  Points: ``edit:computed`` (the pending
row is written, the delta computed, nothing saved), ``edit:delta-writing`` (the delta's
temporary file is written, not yet renamed into place), ``checkpoint:writing`` (the
checkpoint's temporary folder is written, not yet renamed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

POINTS = ("edit:computed", "edit:delta-writing", "checkpoint:writing")


def pause_point(name: str, info: Callable[[], dict] | None = None) -> None:
    if os.environ.get("AMEND_PAUSE_AT") != name:
        return
    marker = Path(os.environ.get("AMEND_PAUSE_FILE", "amend-paused.json"))
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"point": name, "pid": os.getpid(), **(info() if info else {})}), encoding="utf-8")
    tmp.replace(marker)
    while True:  # until the test kills this process
        time.sleep(60)
