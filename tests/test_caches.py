"""On-disk caches shared by processes: built-in model conversion and key statistics.

Two first starts at once (the app beside an evaluation, two evaluations) must compute once and
both succeed; a file cut short by a killed process must not stop the next start.
"""

from __future__ import annotations

import json

import pytest
import torch
from tests_support import run_together

from editing.machinery.covariance import _SAMPLE_BATCH, Corpus, CovarianceCache, _whole_batches
from editing.spec import spec_for
from runtime.loader import _locate_gguf, convert_builtin, converted_dir
from runtime.profiles import BUILTIN_PROFILES


def test_two_caches_compute_key_statistics_once(tokenizer, tmp_path):
    """Two owners of one statistics folder (two processes, in effect) at once: one computes,
    the other waits for the file and reads it."""
    from conftest import make_tiny

    model = make_tiny("llama", len(tokenizer))
    spec = spec_for(model)
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n\n".join(f"Paragraph {i} about towers, rivers and cities." for i in range(200)))
    caches = [CovarianceCache(tmp_path / "stats", "tiny") for _ in range(2)]
    moments = run_together(*(lambda c=c: c.get(model, tokenizer, spec, 1, Corpus(str(corpus_file)), 500)
                             for c in caches))
    assert torch.equal(moments[0], moments[1])
    assert sorted(c.last_from_cache for c in caches) == [False, True]
    assert len(list((tmp_path / "stats" / "tiny").glob("*.safetensors"))) == 1


def test_self_sampled_corpus_drops_a_tail_cut_short(tmp_path):
    cache = tmp_path / "corpus-self.jsonl"
    whole = [f"text {i}" for i in range(_SAMPLE_BATCH)]
    lines = [json.dumps(t) for t in whole + ["one more", "two more"]]
    cache.write_text("\n".join(lines) + '\n"cut sho', encoding="utf-8")
    assert _whole_batches(cache) == whole
    assert cache.read_text(encoding="utf-8").splitlines() == lines[:_SAMPLE_BATCH]
    assert _whole_batches(cache) == whole  # already clean: read as it is
    assert _whole_batches(tmp_path / "missing.jsonl") == []


@pytest.mark.slow
def test_two_first_starts_convert_once(tmp_path):
    """Before the lock, the second conversion's rename failed ("Directory not empty")."""
    profile = BUILTIN_PROFILES["smollm2"]
    paths = run_together(lambda: convert_builtin(profile, tmp_path), lambda: convert_builtin(profile, tmp_path))
    assert paths[0] == paths[1] == converted_dir("smollm2", tmp_path)
    assert (paths[0] / "config.json").exists()
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == ["smollm2"]  # no temp folders left


@pytest.mark.slow
def test_damaged_assembled_gguf_is_assembled_again(tmp_path):
    """gemma3-270m's GGUF is joined from chunk packages; a file cut short by a killed first
    start has the wrong checksum and used to stop every later start."""
    profile = BUILTIN_PROFILES["gemma3-270m"]
    target = tmp_path / "gguf" / profile.gguf_filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF cut short")
    path = _locate_gguf(profile, tmp_path)
    assert path == target and path.stat().st_size > 100_000_000
