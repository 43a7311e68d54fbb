"""kill -9 the app where it hurts most, start it again: the log and the files agree, and the
replayed weights are the weights from before the kill (a checksum of every parameter).

The app runs as a real subprocess (``python app.py``) on smollm2, driven through
``gradio_client``; ``AMEND_PAUSE_AT`` (``agents.faults``) makes it stop at the named point and
write the checksum of its weights there, and the test then kills it with SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client
from tests_support import PASSWORD, free_port

from editing.delta import sha256_file
from editing.fingerprint import weights_checksum
from runtime.loader import amend_home

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path):
    """A fresh data folder that shares the converted models and key statistics of the machine's."""
    folder = tmp_path / "home"
    folder.mkdir()
    for name in ("models", "stats", "gguf"):
        if (amend_home() / name).exists():
            (folder / name).symlink_to(amend_home() / name)
    return folder


class App:
    """``python app.py --model smollm2`` in a subprocess that pauses at ``pause_at``."""

    def __init__(self, home: Path, pause_at: str) -> None:
        self.home, self.marker = home, home / "paused.json"
        self.marker.unlink(missing_ok=True)
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "AMEND_EDIT_PASSWORD": PASSWORD, "AMEND_PAUSE_AT": pause_at,
               "AMEND_PAUSE_FILE": str(self.marker), "OMP_NUM_THREADS": "1"}
        self.output = open(home / f"app-{pause_at.replace(':', '-')}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--model", "smollm2", "--home", str(home), "--port", str(port)],
            cwd=ROOT, env=env, stdout=self.output, stderr=subprocess.STDOUT)
        self.client = self._connect(f"http://127.0.0.1:{port}/")

    def _connect(self, url: str, timeout_s: float = 180) -> Client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the app exited: {(self.home / self.output.name).read_text()[-2000:]}")
            try:
                return Client(url, verbose=False)
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.5)
        raise AssertionError("the app did not start")

    def propose(self, correction: str) -> dict:
        return self.client.predict(correction, api_name="/chat")[3]

    def apply(self, proposal: dict):
        p = proposal["proposal"]
        return self.client.submit(proposal["id"], PASSWORD, p["subject"], p["prompt"], p["target_new"], "rome",
                                  proposal["layer"], False, api_name="/apply_edit")

    def killed_at_pause(self, timeout_s: float = 300) -> dict:
        """Wait for the pause point, kill -9 the app there; what the app wrote at the pause."""
        deadline = time.monotonic() + timeout_s
        while not self.marker.exists():
            assert self.process.poll() is None, "the app exited before the pause point"
            assert time.monotonic() < deadline, "the app never reached the pause point"
            time.sleep(0.2)
        paused = json.loads(self.marker.read_text())
        self.process.kill()  # SIGKILL: no handler, no cleanup
        self.process.wait()
        self.output.close()
        return paused


def restart_and_check(home: Path, paused: dict) -> list:
    """Start the app's services again the way ``app.py`` does and check log, files and weights."""
    import app

    assistant = app.build_assistant(app.Settings(model="smollm2", home=home))
    assistant.close()  # the start-up work (context prefixes) finishes before the checks
    service = assistant.service
    assert weights_checksum(service.loaded.model) == paused["weights"], "replay gave other weights"
    edits = service.log.edits()
    assert not [e for e in edits if e.status == "pending"]
    listed = {Path(e.delta_path).name: e for e in edits if e.status in ("applied", "reverted")}
    for name, edit in listed.items():
        assert sha256_file(service.deltas_dir / name) == edit.delta_sha256
    on_disk = {p.name.removesuffix(".json") for p in service.deltas_dir.iterdir()}
    assert on_disk == set(listed), f"files no edit names: {on_disk - set(listed)}"
    checkpoints = home / "checkpoints"
    assert not checkpoints.exists() or not [p for p in checkpoints.iterdir() if p.name.startswith(".")]
    return edits


def test_kill_during_checkpoint_then_during_an_edit_then_while_its_delta_is_written(home):
    # (c) a checkpoint half-written: the applied edit before it stays, no checkpoint is listed
    running = App(home, "checkpoint:writing")
    report = running.apply(running.propose("Actually, the Eiffel Tower is in Rome.")).result()
    kept = next(x for x in report if isinstance(x, dict) and "edit" in x)["edit"]
    running.client.submit(PASSWORD, api_name="/save_checkpoint")
    paused = running.killed_at_pause()
    edits = restart_and_check(home, paused)
    assert [(e.id, e.status) for e in edits] == [(kept["id"], "applied")]

    # (a) after the pending row is written and the delta computed, before it is saved
    running = App(home, "edit:computed")
    running.apply(running.propose("Actually, the Colosseum is in Madrid."))
    paused = running.killed_at_pause()
    edits = restart_and_check(home, paused)
    assert [e.status for e in edits] == ["failed", "applied"] and "interrupted" in edits[0].error

    # (b) while the delta file is being written: its temporary file is never used or listed
    running = App(home, "edit:delta-writing")
    running.apply(running.propose("Actually, the Louvre is in Berlin."))
    paused = running.killed_at_pause()
    assert any(p.name.startswith(".") for p in (home / "state" / "smollm2" / "deltas").iterdir())
    edits = restart_and_check(home, paused)
    assert [e.status for e in edits] == ["failed", "failed", "applied"]
