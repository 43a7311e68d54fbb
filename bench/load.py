"""Many people at once: concurrent gradio_client sessions chat while one edit and one revert land.

    python -m bench.load [--sessions 8] [--max-new-tokens 48]

Starts ``python app.py --model smollm2`` on loopback (a fresh data folder sharing the machine's
converted model and key statistics), then runs ``--sessions`` browser sessions at once, five
messages each:

1. a question of its own, and 2. "Where is the Eiffel Tower?" — while an operator session
   corrects the Eiffel Tower to Rome and applies the edit (the edit is computed beside them);
3. once the edit is applied: ``clean``, then the Eiffel question — the answer must say Rome;
4. a question of its own — while the operator reverts the edit;
5. once it is reverted: ``clean``, then the Eiffel question — the answer must say Paris.

It prints sessions, messages, p50/p95 latency per message, errors, and answers that show the
wrong fact; the last line is JSON.  ``tests/test_load.py`` runs the same load against an
in-process app and asserts no errors and every session seeing the edit exactly while applied.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "load-test-password"
EIFFEL = "Where is the Eiffel Tower?"
CORRECTION = "Actually, the Eiffel Tower is in Rome."
QUESTIONS = ["What is the capital of Japan?", "Who wrote Hamlet?", "What is water made of?", "Name a primary colour.",
             "What is the largest planet?", "Who painted the Mona Lisa?", "What language is spoken in Brazil?",
             "How many legs does a spider have?"]


@dataclass
class LoadReport:
    sessions: int
    messages: int = 0
    errors: list[str] = field(default_factory=list)
    wrong_fact: list[str] = field(default_factory=list)  # answers after apply without Rome / after revert without Paris
    empty: int = 0
    latencies: list[float] = field(default_factory=list)
    edit_seconds: float = 0.0
    revert_seconds: float = 0.0
    chats_during_edit: int = 0  # messages whose answer was generated while the edit was computed
    wall_seconds: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def summary(self) -> dict:
        return {"sessions": self.sessions, "messages": self.messages, "errors": len(self.errors),
                "wrong_fact": len(self.wrong_fact), "empty_answers": self.empty,
                "p50_s": round(self.percentile(0.5), 2), "p95_s": round(self.percentile(0.95), 2),
                "mean_s": round(statistics.fmean(self.latencies), 2) if self.latencies else None,
                "edit_s": round(self.edit_seconds, 1), "revert_s": round(self.revert_seconds, 1),
                "chats_during_edit": self.chats_during_edit, "wall_s": round(self.wall_seconds, 1)}


def _text(history: list) -> str:
    content = history[-1]["content"] if history else ""
    if isinstance(content, list):  # Gradio 6 message content is a list of blocks
        content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
    return str(content)


def run_load(url: str, sessions: int = 8, max_new_tokens: int = 48, password: str = PASSWORD) -> LoadReport:
    """The five-message load above against the app at ``url``."""
    from gradio_client import Client

    report = LoadReport(sessions=sessions)
    lock = threading.Lock()
    clients = [Client(url, verbose=False) for _ in range(sessions)]
    operator = Client(url, verbose=False)
    started, asked = threading.Barrier(sessions + 1), threading.Barrier(sessions + 1)
    applied, reverted = threading.Event(), threading.Event()
    editing: dict[str, float] = {}

    def say(client: Client, message: str, label: str, expect: str | None = None) -> None:
        start = time.perf_counter()
        try:
            history = client.predict(message, 0.0, max_new_tokens, api_name="/chat")[0]
        except Exception as exc:  # noqa: BLE001 - counted: the load must give none
            with lock:
                report.errors.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        end = time.perf_counter()
        answer = _text(history)
        with lock:
            report.messages += 1
            report.latencies.append(end - start)
            report.empty += not answer.strip()
            if expect and expect not in answer:
                report.wrong_fact.append(f"{label}: {answer!r}")
            if "start" in editing and start < editing.get("end", end) and end > editing["start"]:
                report.chats_during_edit += 1

    def session(i: int) -> None:
        client = clients[i]
        started.wait()
        say(client, QUESTIONS[i % len(QUESTIONS)], f"session {i} message 1")
        say(client, EIFFEL, f"session {i} message 2")
        applied.wait()
        client.predict(api_name="/clean")
        say(client, EIFFEL, f"session {i} message 3 (edit applied)", expect="Rome")
        asked.wait()
        say(client, QUESTIONS[(i + 3) % len(QUESTIONS)], f"session {i} message 4")
        reverted.wait()
        client.predict(api_name="/clean")
        say(client, EIFFEL, f"session {i} message 5 (edit reverted)", expect="Paris")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    try:
        proposal = operator.predict(CORRECTION, 0.0, max_new_tokens, api_name="/chat")[3]
        p = proposal["proposal"]
        started.wait()
        editing["start"] = time.perf_counter()
        result = operator.predict(proposal["id"], password, p["subject"], p["prompt"], p["target_new"], "rome",
                                  proposal["layer"], False, api_name="/apply_edit")
        editing["end"] = time.perf_counter()
        report.edit_seconds = editing["end"] - editing["start"]
        edit_id = next(x for x in result if isinstance(x, dict) and "edit" in x)["edit"]["id"]
        applied.set()
        asked.wait()
        start = time.perf_counter()
        operator.predict(edit_id, password, api_name="/revert_edit")
        report.revert_seconds = time.perf_counter() - start
        reverted.set()
    except Exception as exc:  # noqa: BLE001
        report.errors.append(f"operator: {type(exc).__name__}: {exc}")
        for barrier in (started, asked):
            barrier.abort()
    finally:
        applied.set()
        reverted.set()
        for t in threads:
            t.join()
    report.wall_seconds = time.perf_counter() - wall
    return report


def _home() -> Path:
    from runtime.loader import amend_home

    home = Path(tempfile.mkdtemp(prefix="amend-load-"))
    for name in ("models", "stats", "gguf"):
        if (amend_home() / name).exists():
            (home / name).symlink_to(amend_home() / name)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--port", type=int, default=7871)
    args = parser.parse_args()
    home = _home()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AMEND_EDIT_PASSWORD": PASSWORD}
    app = subprocess.Popen([sys.executable, "app.py", "--model", "smollm2", "--home", str(home), "--port",
                            str(args.port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    url = f"http://127.0.0.1:{args.port}/"
    try:
        from gradio_client import Client

        for _ in range(360):
            try:
                Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if app.poll() is not None:
                    raise SystemExit(f"the app exited:\n{app.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        report = run_load(url, args.sessions, args.max_new_tokens)
    finally:
        app.terminate()
        app.wait()
    summary = report.summary()
    for key, value in summary.items():
        print(f"{key:18s} {value}")
    for line in report.errors + report.wrong_fact:
        print("  ", line[:300])
    print(json.dumps({**summary, "errors_detail": report.errors, "wrong_fact_detail": report.wrong_fact,
                      "all": asdict(report)["latencies"]}))


if __name__ == "__main__":
    main()
