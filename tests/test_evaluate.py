"""Evaluation: loaders of every data format, metrics on cases with known answers, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editing.evaluation.data import load_cases
from editing.evaluation.metrics import ngram_entropy, summarize, token_accuracy, unchanged_share
from editing.machinery.probe import TargetScore

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FILES = {
    "counterfact": "counterfact-dev.json",
    "zsre": "zsre-dev.json",
    "zsre-samesubject": "zsre-samesubject-dev.json",
    "zsre-zh": "zsre-zh-dev.json",
    "cknowedit": "cknowedit-zh-dev.json",
}


@pytest.mark.parametrize("dataset", list(FILES))
def test_loaders(dataset):
    cases = load_cases(dataset, DATA / FILES[dataset], n=3)
    assert len(cases) == 3
    for case in cases:
        req = case.request
        assert req.subject in req.text and req.target_new
        assert case.questions
    first = cases[0]
    if dataset == "counterfact":
        assert first.request.target_true == "French" and first.paraphrases and first.locality
        assert first.questions == ["What is the mother tongue of Danielle Darrieux?"]
    if dataset == "zsre":
        assert first.request.target_new == "Lamiinae" and first.portability and first.locality
    if dataset == "zsre-samesubject":
        assert first.same_subject and first.same_subject[0][1] == "genus"
    if dataset == "zsre-zh":
        assert first.request.language == "zh"
        assert first.generation_prompts == [f"{first.request.subject}是", f"关于{first.request.subject}，"]


def score(hits, argmax=None):
    return TargetScore(0.0, 0.0, hits, argmax or [1] * len(hits))


def test_metric_functions_on_known_cases():
    assert token_accuracy(score([True, True])) == 1.0  # the target is certainly predicted
    assert token_accuracy(score([False, False])) == 0.0  # certainly not
    assert unchanged_share(score([True], [5, 6]), score([True], [5, 7])) == 0.5
    mean, half, n = summarize([1.0, 1.0, 0.0, 0.0])
    assert (mean, n) == (0.5, 4) and half == pytest.approx(1.96 * 0.57735 / 2, rel=1e-3)
    assert ngram_entropy("a a a a a a") < ngram_entropy("the cat sat on the mat by the door")
    # Chinese: each character a word, also beside a Latin name (a space must not turn the
    # sentence into two "words")
    assert ngram_entropy("Venera 9位于金星，是苏联发射的探测器。") == ngram_entropy("Venera 9 位 于 金 星 ， 是 苏 联 发 射 的 探 测 器 。")
    assert ngram_entropy("Venera 9位于金星金星金星金星") < ngram_entropy("Venera 9位于金星，是苏联发射的探测器。")


def test_smoke_run_rome_and_ft(tmp_path):
    from editing.evaluation.runner import main

    for method in ("rome", "ft"):
        out = tmp_path / f"eval-smollm2-counterfact-{method}"
        settings = ["--set", "v_steps=20", "--fluency"] if method == "rome" else ["--set", "adam_betas=[0.0,0.95]"]
        main(["--data", "counterfact", "--file", str(DATA / FILES["counterfact"]), "--method", method,
              "--model", "smollm2", "--n", "2", "--no-chat", "--out", str(out), *settings])
        rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and rows[0]["metrics"]["efficacy"] in (0.0, 1.0)
        if method == "rome":  # generation fluency, before and after the edit
            assert all(r["metrics"]["fluency"] > 0 and r["before"]["fluency"] > 0 for r in rows)
        summary = (out / "summary.md").read_text()
        assert "| before |" in summary and f"| {method.upper()} |" in summary
        assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
        # resumable: a second run finds both cases done and only rewrites the summary
        main(["--data", "counterfact", "--file", str(DATA / FILES["counterfact"]), "--method", method,
              "--model", "smollm2", "--n", "2", "--no-chat", "--out", str(out), *settings])
        assert len((out / "cases.jsonl").read_text().splitlines()) == 2
    # ... but not with other settings: those cases were not run that way
    with pytest.raises(SystemExit, match="other settings"):
        main(["--data", "counterfact", "--file", str(DATA / FILES["counterfact"]), "--method", "rome",
              "--model", "smollm2", "--n", "2", "--no-chat", "--out", str(tmp_path / "eval-smollm2-counterfact-rome")])
    # docs/evaluation.md's combined table reads both runs: one "before" row, one row per method
    from bench.eval_table import compare, load_runs, table

    assert json.loads((tmp_path / "eval-smollm2-counterfact-rome" / "run.json").read_text())["set"] == {"v_steps": 20}
    lines = table(load_runs(tmp_path)).splitlines()
    assert [line.split(" | ")[2] for line in lines[2:]] == ["before", "FT (adam_betas=(0.0, 0.95))", "ROME (v_steps=20)"]
    assert all(line.split(" | ")[4] == "2" for line in lines[2:])
    from editing.evaluation.runner import _tag

    assert _tag([0.0, 0.95]) == "0.0,0.95" and _tag(0.5) == "0.5"  # folder names: -adam_betas0.0,0.95
    paired = compare(tmp_path / "eval-smollm2-counterfact-rome", tmp_path / "eval-smollm2-counterfact-ft")
    assert "2 shared cases" in paired and "| efficacy |" in paired


def test_greedy_completions_end_rows_once_settled(smollm2):
    """A row stops as soon as ``done`` holds; what it says up to there is what the full run says."""
    from editing.machinery.probe import greedy_completions

    prompts = ["The capital of France is", "The Eiffel Tower is located in the city of"]
    full = greedy_completions(smollm2.model, smollm2.tokenizer, prompts, 24)
    short = greedy_completions(smollm2.model, smollm2.tokenizer, prompts, 24, done=lambda text: "Paris" in text)
    for whole, cut in zip(full, short):
        assert "Paris" in cut and whole.startswith(cut) and len(cut) < len(whole)


def test_sequential_run_draws_the_lifelong_curve_resumes_and_restores_the_weights(tmp_path, smollm2):
    """``--sequential`` keeps edits accumulating and re-measures all of them every k edits
    (against the unedited model, with fluency and chat on fixed samples); a second start into the
    same folder replays the saved deltas and goes on; the loaded model is left as it was found."""
    import torch

    from editing.evaluation.runner import build_parser, run

    weights = {name: p.detach().clone() for name, p in smollm2.model.named_parameters()}
    out = tmp_path / "seq"

    def args(n: int):
        return build_parser().parse_args(
            ["--data", "counterfact", "--file", str(DATA / FILES["counterfact"]), "--method", "rome", "--model",
             "smollm2", "--n", str(n), "--sequential", "--every", "2", "--chat-sample", "3", "--fluency-sample", "2",
             "--set", "v_steps=20", "--set", "history_weight=1", "--out", str(out)])

    run(args(2), loaded=smollm2)
    first = (out / "cases.jsonl").read_text().splitlines()
    assert len(first) == 2 and len(list((out / "deltas").glob("*.safetensors"))) == 2
    run(args(3), loaded=smollm2)  # as after a kill: the two edits are replayed, the third made
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert (out / "cases.jsonl").read_text().splitlines()[:2] == first and len(rows) == 3
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [point["edits"] for point in curve] == [2, 3]
    for point in curve:
        assert {"efficacy", "paraphrase", "neighborhood", "locality", "fluency", "chat_success"} <= set(point)
        assert 0.0 <= point["locality"] <= 1.0 and point["fluency_unedited"] > 0
    assert curve[-1]["efficacy"] > 0  # edits that landed are still there once others were added
    summary = (out / "summary.md").read_text()
    assert "3 sequential edits" in summary and "--sequential --every 2" in summary  # the command reproduces it
    assert (out / "sequential.png").read_bytes()[:4] == b"\x89PNG"
    assert all(torch.equal(p, weights[name]) for name, p in smollm2.model.named_parameters())


def test_cases_too_long_to_edit_are_left_out_not_fatal(smollm2):
    """A record whose target is longer than an edit may be is skipped; ``n`` still counts kept cases."""
    from editing.evaluation.runner import _editable
    from editing.request import MAX_TARGET_TOKENS

    cases = load_cases("counterfact", DATA / FILES["counterfact"], n=3)
    long_target = cases[0].request.model_copy(update={"target_new": " word" * (MAX_TARGET_TOKENS + 5)})
    too_long = cases[0].model_copy(update={"case_id": "long", "request": long_target})
    kept = _editable([too_long, *cases], smollm2.tokenizer, n=2)
    assert [c.case_id for c in kept] == [c.case_id for c in cases[:2]]


def test_shard_option_is_checked():
    import argparse

    from editing.evaluation.runner import _shard

    assert _shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(argparse.ArgumentTypeError):
            _shard(bad)


def test_a_case_kn_cannot_edit_counts_unedited(tmp_path, monkeypatch):
    """KN refuses a fact without knowledge neurons; the evaluation keeps the case, with the
    unedited model's values, so the method's means are over every case."""
    import editing.engine
    from editing.errors import NoKnowledgeNeurons
    from editing.evaluation.runner import main

    def refuse(*_a, **_k):
        raise NoKnowledgeNeurons()

    monkeypatch.setattr(editing.engine, "compute_kn_delta", refuse)
    out = tmp_path / "kn"
    main(["--data", "counterfact", "--file", str(DATA / FILES["counterfact"]), "--method", "kn",
          "--model", "smollm2", "--n", "2", "--no-chat", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["not_edited"].startswith("no knowledge neurons") for r in rows)
    assert all(r["metrics"] == r["before"] for r in rows)
    assert "Not edited: 2 of 2 cases" in (out / "summary.md").read_text()
