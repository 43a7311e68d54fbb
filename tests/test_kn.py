"""KN (knowledge neurons): mechanics on a tiny random llama, behaviour on smollm2."""

from __future__ import annotations

import torch

from editing.delta import DeltaStack
from editing.engine import Editor
from editing.hparams import KNHyperParams
from editing.methods.kn import attribute, compute_kn_delta, select_neurons
from editing.request import EditRequest
from editing.spec import spec_for

REQUEST = EditRequest(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome",
                      target_true="Paris")
FAST = KNHyperParams(steps=4, n_prefixes=1, chat_template=False, relation_samples=1)


def test_attribution_has_a_score_per_neuron_and_none_for_a_silenced_one(tokenizer):
    from conftest import make_tiny

    model = make_tiny("llama", len(tokenizer))
    spec = spec_for(model)
    with torch.no_grad():  # neuron 7 of layer 1 never fires: its gate and up rows are zero
        model.model.layers[1].mlp.gate_proj.weight[7] = 0
        model.model.layers[1].mlp.up_proj.weight[7] = 0
    target = tokenizer(" Paris", add_special_tokens=False).input_ids[0]
    scores = attribute(model, tokenizer, spec, REQUEST.text, target, steps=4)
    assert scores.shape == (4, 64) and scores.abs().sum() > 0
    assert scores[1, 7] == 0
    only = attribute(model, tokenizer, spec, REQUEST.text, target, steps=4, layers=[2])
    assert only[[0, 1, 3]].abs().sum() == 0 and torch.allclose(only[2], scores[2], atol=1e-6)


def test_the_replayed_upper_layers_give_the_full_passes_attribution(tokenizer, monkeypatch):
    """Each chunk of scaled layers runs only the layers from its lowest one up; where the α = 1
    rows disagree with the clean pass the chunk is rerun in full — both must give one answer."""
    from conftest import make_tiny

    import editing.methods.kn as kn

    model = make_tiny("llama", len(tokenizer))
    target = tokenizer(" Paris", add_special_tokens=False).input_ids[0]
    replayed = attribute(model, tokenizer, spec_for(model), REQUEST.text, target, steps=4, layers_per_pass=2)
    monkeypatch.setattr(kn, "same_result", lambda *a: False)  # the check fails: full passes
    full = attribute(model, tokenizer, spec_for(model), REQUEST.text, target, steps=4, layers_per_pass=2)
    assert replayed.abs().sum() > 0 and torch.allclose(replayed, full, rtol=1e-4, atol=1e-9)


def test_refinement_keeps_neurons_shared_by_the_prompts():
    scores = torch.zeros(4, 2, 8)
    scores[:, 0, 3] = 1.0  # every prompt: the fact's neuron
    scores[0, 1, 5] = 0.9  # one prompt only
    scores[:3, 1, 6] = 0.5  # three of four
    assert select_neurons(scores, threshold=0.2, share=0.7) == [(0, 3), (1, 6)]
    assert select_neurons(scores, 0.2, 0.7, excluded=torch.zeros(2, 8, dtype=torch.bool).index_fill_(1, torch.tensor([3]), True)) == [(1, 6)]


def test_the_delta_rewrites_only_the_chosen_value_slots_and_reverts_exactly(tokenizer, tmp_path):
    from conftest import make_tiny

    model = make_tiny("llama", len(tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ed = Editor(model, tokenizer, stats_dir=tmp_path, default_layer=1)
    result = compute_kn_delta(model, tokenizer, REQUEST, FAST, spec_for(model), templates=ed.templates("en", 1, (5, 10)))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "computing writes nothing"
    assert result.neurons and 0 < result.target_prob < 1
    for piece in result.delta.pieces():
        layer = int(piece.param.split(".")[2])
        changed = piece.matrix().abs().sum(0).nonzero().flatten().tolist()  # columns = neurons (d_out, d_ff)
        assert sorted(changed) == sorted(n for lay, n in result.neurons if lay == layer)
    stack = DeltaStack(model)
    stack.apply(result.delta)
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    stack.revert(result.delta.id)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_chat_prompt_ends_at_the_answers_opening_when_there_is_one(tokenizer, monkeypatch):
    """With ``chat_opening`` the chat prompt is attributed where the model's own answer names the
    object (after its restatement of the question), not after the question plus the prompt."""
    from conftest import make_tiny

    import editing.methods.kn as kn

    model = make_tiny("llama", len(tokenizer))
    seen = []
    real = kn.attribute
    monkeypatch.setattr(kn, "attribute", lambda m, t, s, prompt, *a, **k: seen.append(prompt) or real(m, t, s, prompt, *a, **k))
    chat = lambda question: f"User: {question}\nAssistant:"  # noqa: E731
    hparams = FAST.model_copy(update={"chat_template": True, "relation_samples": 0})
    opened = REQUEST.model_copy(update={"question": "Where is the Eiffel Tower?",
                                        "answer_opening": " The Eiffel Tower is in"})
    compute_kn_delta(model, tokenizer, opened, hparams, spec_for(model), templates=["{}"], chat_prompt=chat)
    compute_kn_delta(model, tokenizer, REQUEST.model_copy(update={"question": "Where is the Eiffel Tower?"}),
                     hparams, spec_for(model), templates=["{}"], chat_prompt=chat)
    assert seen == [REQUEST.text, "User: Where is the Eiffel Tower?\nAssistant: The Eiffel Tower is in",
                    REQUEST.text, "User: Where is the Eiffel Tower?\nAssistant:" + REQUEST.text]


def test_a_kn_edit_on_smollm2_raises_the_new_answer(smollm2, smol_editor):
    """The paper's settings on an easy fact: P(Rome) 0.006 → ≈ 1 measured; asserted ≥ 10× (and
    KN's strength is also its weakness — docs/evaluation.md, "KN")."""
    from editing.machinery.probe import target_probability

    model, tok = smollm2.model, smollm2.tokenizer
    before = target_probability(model, tok, REQUEST.text, "Rome")
    outcome = smol_editor.compute(REQUEST, "kn")
    smol_editor.stack.apply(outcome.delta)
    try:
        after = target_probability(model, tok, REQUEST.text, "Rome")
        assert after > 10 * before
        assert abs(outcome.target_prob - after) < 1e-3  # computed without writing the model, as applied
        assert outcome.delta.meta["method"] == "kn" and outcome.layer == outcome.delta.meta["neurons"][0][0]
    finally:
        smol_editor.stack.revert_all()
