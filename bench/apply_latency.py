"""From Apply to the first report, as a person waits for it: through gradio_client against the app.

    python -m bench.apply_latency [--model smollm2] [--n 10] [--think 10]

Starts ``python app.py`` on loopback (a fresh data folder sharing the machine's converted model
and key statistics, so statistics are cached), warms it with one edit, then for each of the
first ``--n`` counterfact-dev cases: sends the correction "Actually, <prompt> <new answer>." in
a fresh chat, waits ``--think`` seconds (a person reading the card and typing the password; the
card's "before" column is measured meanwhile), clicks Apply, and times the first report
(P(new)/P(old) before and after: "Edit applied") and the full one (completion, chat answer and
unrelated probes streamed in).  Edits stay applied, as in the app.  It prints the medians next
to the engine's own time for the same edits (``Editor.compute``, from the report); the last
line is JSON.  Cases the parser reads as another fact than the case's are left out and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench.load import PASSWORD, ROOT, _home

DATA = ROOT.parent / "shared" / "data" / "counterfact-dev.json"


def _wait_up(url: str, app: subprocess.Popen):
    from gradio_client import Client

    for _ in range(600):
        try:
            return Client(url, verbose=False)
        except Exception:  # noqa: BLE001 - not up yet
            if app.poll() is not None:
                raise SystemExit("the app exited before it was up") from None
            time.sleep(0.5)
    raise SystemExit("the app did not start")


def one_edit(client, message: str, subject: str, target: str, think: float) -> dict | None:
    """Chat the correction, wait, Apply; seconds to the first and to the full report."""
    client.predict(api_name="/clean")
    proposal = client.predict(message, 0.0, 64, api_name="/chat")[3]
    if not proposal or proposal["proposal"]["subject"] != subject or proposal["proposal"]["target_new"] != target:
        return None
    time.sleep(think)
    p = proposal["proposal"]
    start = time.perf_counter()
    job = client.submit(proposal["id"], PASSWORD, p["subject"], p["prompt"], p["target_new"], "rome",
                        proposal["layer"], False, api_name="/apply_edit")
    first = None
    while not job.done():
        if first is None and job.outputs():
            first = time.perf_counter() - start
        time.sleep(0.02)
    full = time.perf_counter() - start
    outputs = job.outputs()
    first = first if first is not None else full
    report = next(x for x in outputs[-1] if isinstance(x, dict) and "edit" in x)
    first_report = next(x for x in outputs[0] if isinstance(x, dict) and "edit" in x)
    return {"first_s": round(first, 2), "full_s": round(full, 2), "service_s": round(first_report["seconds"], 2),
            "engine_s": round(first_report["engine_seconds"], 2), "lands": first_report["after"]["predicted"],
            "chat_after": report["after"]["chat_answer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--think", type=float, default=10.0, help="seconds between the card and Apply")
    parser.add_argument("--port", type=int, default=7872)
    args = parser.parse_args()
    cases = json.loads(DATA.read_text(encoding="utf-8"))
    home = _home()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AMEND_EDIT_PASSWORD": PASSWORD}
    app = subprocess.Popen([sys.executable, "app.py", "--model", args.model, "--home", str(home), "--port",
                            str(args.port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows, skipped = [], 0
    try:
        client = _wait_up(f"http://127.0.0.1:{args.port}/", app)
        one_edit(client, "Actually, the Colosseum is in Madrid.", "Colosseum", "Madrid", args.think)  # warm-up
        for case in cases:
            if len(rows) == args.n:
                break
            rewrite = case["requested_rewrite"]
            subject, target = rewrite["subject"], rewrite["target_new"]["str"]
            message = f"Actually, {rewrite['prompt'].format(subject)} {target}."
            row = one_edit(client, message, subject, target, args.think)
            if row is None:
                skipped += 1
                continue
            rows.append({"case_id": case["case_id"], **row})
            print(f"case {case['case_id']}: first report {row['first_s']} s (service {row['service_s']} s, engine "
                  f"{row['engine_s']} s), full {row['full_s']} s, lands {row['lands']}", file=sys.stderr)
    finally:
        app.terminate()
        app.wait()

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 2)

    summary = {"model": args.model, "cases": len(rows), "skipped": skipped, "think_s": args.think,
               "first_report_s": median("first_s"), "full_report_s": median("full_s"),
               "service_s": median("service_s"), "engine_s": median("engine_s"),
               "lands": sum(r["lands"] for r in rows)}
    for key, value in summary.items():
        print(f"{key:16s} {value}")
    print(json.dumps({**summary, "rows": rows}, ensure_ascii=False))


if __name__ == "__main__":
    main()
