"""Helpers shared by the benchmark scripts: peak memory, running a function in a child process."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, *args: str, env: dict | None = None) -> dict:
    """Run ``python -m module args`` and parse the JSON it prints on its last line
    (one process per measurement, so peak RSS belongs to that measurement alone)."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def markdown_table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)
