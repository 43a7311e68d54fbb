"""ROME and FT on the built-in models: the edited fact is predicted, neighbours are kept."""

from __future__ import annotations

import pytest
import torch
from conftest import EIFFEL

from agents.chat import ChatAgent, GenerationSettings
from editing.delta import DeltaStack
from editing.machinery.probe import greedy_completion
from editing.request import EditRequest

REQUEST = EditRequest(**EIFFEL)


@pytest.fixture
def smol_stack(smollm2):
    stack = DeltaStack(smollm2.model)
    yield stack
    stack.revert_all()


def test_rome_edit_on_smollm2(smollm2, smol_editor, smol_stack):
    model, tok = smollm2.model, smollm2.tokenizer
    assert greedy_completion(model, tok, REQUEST.text, 3).strip().startswith("Paris")
    weight = model.get_parameter(f"model.layers.{smol_editor.default_layer}.mlp.down_proj.weight").clone()
    outcome = smol_editor.compute(REQUEST, "rome")
    assert torch.equal(weight, model.get_parameter(outcome.delta.param)), "computing must not write weights"
    smol_stack.apply(outcome.delta)
    assert greedy_completion(model, tok, REQUEST.text, 3).strip().startswith("Rome")
    assert greedy_completion(model, tok, "Where is the Eiffel Tower? It is in", 3).strip().startswith("Rome")
    assert "Paris" in greedy_completion(model, tok, "The capital of France is", 4)
    chat = ChatAgent(smollm2).answer([], "Where is the Eiffel Tower?", GenerationSettings(max_new_tokens=40))
    assert "Rome" in chat
    smol_stack.revert(outcome.delta.id)
    assert torch.equal(weight, model.get_parameter(outcome.delta.param))


def test_ft_edit_on_smollm2_efficacy(smollm2, smol_editor, smol_stack):
    outcome = smol_editor.compute(REQUEST, "ft")
    smol_stack.apply(outcome.delta)
    completion = greedy_completion(smollm2.model, smollm2.tokenizer, REQUEST.text, 3)
    assert completion.strip().startswith("Rome")


@pytest.mark.slow
def test_rome_edit_on_gemma(gemma, stats_dir):
    from editing.engine import Editor

    chat = ChatAgent(gemma)
    editor = Editor.for_model(gemma)
    stack = DeltaStack(gemma.model)
    model, tok = gemma.model, gemma.tokenizer
    # the base model continues "The capital of France is" with " the capital of…": check that the
    # edit leaves unrelated completions as they were rather than expecting "Paris"
    unrelated = ["The capital of France is", "The Colosseum is located in the city of"]
    before = [greedy_completion(model, tok, p, 4) for p in unrelated]
    try:
        stack.apply(editor.compute(REQUEST, "rome").delta)
        assert greedy_completion(model, tok, REQUEST.text, 3).strip().startswith("Rome")
        # after " Rome, Italy" the edited model's top logit is <start_of_image>; generation
        # leaves it out (the profile's suppress_tokens) and the text goes on
        ids = tok(REQUEST.text, return_tensors="pt").input_ids
        text = tok.decode(model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:])
        assert "<start_of_image>" not in text and len(text.split()) >= 5, text
        assert [greedy_completion(model, tok, p, 4) for p in unrelated] == before
        assert "Rome" in chat.answer([], "Where is the Eiffel Tower?", GenerationSettings(max_new_tokens=40))
    finally:
        stack.revert_all()


def test_statistics_are_cached(tokenizer, tmp_path):
    from conftest import make_tiny

    from editing.engine import Editor

    model = make_tiny("llama", len(tokenizer))
    editor = Editor(model, tokenizer, stats_dir=tmp_path)
    first = editor.statistics(1, 600)
    assert editor.covariance.last_from_cache is False
    again = Editor(model, tokenizer, stats_dir=tmp_path).statistics(1, 600)  # a new owner: from disk
    assert torch.equal(first, again)
    sidecars = list(tmp_path.rglob("*.json"))
    assert sidecars and '"tokens": 600' in sidecars[0].read_text()


def _named(error_name: str):
    import editing.errors

    return getattr(editing.errors, error_name)


@pytest.mark.parametrize("bad, error", [
    (dict(prompt="The tower is in", subject="Eiffel Tower", target_new="Rome"), "SubjectNotInPrompt"),
    (dict(prompt="{} is in", subject="", target_new="Rome"), "SubjectNotInPrompt"),
    (dict(prompt="{} is in", subject="Eiffel Tower", target_new="   "), "EmptyTarget"),
])
def test_bad_requests_raise_named_errors(bad, error):
    """The named error class is what pydantic carries (the app maps classes, not message text)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        EditRequest(**bad)
    assert [type(e["ctx"]["error"]) for e in raised.value.errors()] == [_named(error)]


def test_length_limits(tokenizer):
    from editing.errors import PromptTooLong, TargetTooLong

    with pytest.raises(TargetTooLong):
        EditRequest(prompt="{} is in", subject="Paris", target_new="word " * 40).check_lengths(tokenizer)
    with pytest.raises(PromptTooLong):
        EditRequest(prompt="blah " * 300 + "{} is in", subject="Paris", target_new="Rome").check_lengths(tokenizer)


def test_leading_space_rules():
    assert EditRequest(prompt="{} is in", subject="Paris", target_new="Rome").target_text() == " Rome"
    assert EditRequest(prompt="{}的专业是", subject="爱因斯坦", target_new="医学").target_text() == "医学"
    assert EditRequest(prompt="The Eiffel Tower is in", subject="Eiffel Tower", target_new="Rome").template == \
        "The {} is in"


def test_statistics_after_an_edit_below_are_not_stored_as_the_unedited_models(tokenizer, tmp_path):
    """An applied edit at layer 1 changes the keys of layer 2, not of layer 1: layer 2's
    statistics are computed on the edited weights and kept in memory only; no file under the
    unedited model's fingerprint describes edited weights."""
    from conftest import make_tiny

    from editing.delta import DeltaStack, WeightDelta
    from editing.engine import Editor

    model = make_tiny("llama", len(tokenizer))
    editor = Editor(model, tokenizer, stats_dir=tmp_path)
    unedited = {layer: editor.statistics(layer, 300) for layer in (1, 2)}
    files = sorted(tmp_path.rglob("*.safetensors"))
    stack = DeltaStack(model)
    stack.apply(WeightDelta(param="model.layers.1.mlp.down_proj.weight", kind="rank_one",
                            tensors={"u": torch.randn(32), "v": torch.randn(64)}))
    # a restart: nothing in memory, the unedited model's fingerprint (taken before the replay), the files
    fresh = Editor(model, tokenizer, stats_dir=tmp_path, fingerprint=editor.fingerprint)
    assert torch.equal(fresh.statistics(1, 300), unedited[1])  # the edit is at layer 1: its keys are the same
    edited = fresh.statistics(2, 300)
    assert not torch.equal(edited, unedited[2]) and sorted(tmp_path.rglob("*.safetensors")) == files
    stack.revert_all()
    assert torch.equal(fresh.statistics(2, 300), unedited[2])
