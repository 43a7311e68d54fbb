"""Shared fixtures: tiny random models for mechanics, the built-in models for behaviour.

The built-in models are converted once into ``$AMEND_HOME`` (default ~/.cache/amend), and their
key statistics computed once there, like the app does, and reused across runs (set AMEND_HOME
for another folder); everything else a test writes goes to a temporary folder.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from runtime import load_model  # noqa: E402

TINY = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256),
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=256),
}


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2", device="cpu")


@pytest.fixture(scope="session")
def gemma():
    return load_model("gemma3-270m", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    return smollm2.tokenizer


def make_tiny(arch: str, vocab_size: int, seed: int = 0):
    config = AutoConfig.for_model(arch, vocab_size=vocab_size, **TINY[arch])
    if arch == "gpt2":
        config.bos_token_id = config.eos_token_id = 0
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(params=list(TINY))
def tiny(request, tokenizer):
    return make_tiny(request.param, len(tokenizer))


@pytest.fixture(scope="session")
def stats_dir():
    """Key statistics are expensive (≈100 s per layer on smollm2) and depend only on the
    model, so tests share the machine's cache like the app does."""
    from runtime.loader import amend_home

    return amend_home() / "stats"


EIFFEL = dict(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome",
              question="Where is the Eiffel Tower?")


@pytest.fixture(scope="session")
def smol_editor(smollm2):
    from editing.engine import Editor

    return Editor.for_model(smollm2)


@pytest.fixture
def assistant(smollm2, tmp_path):
    """The product's facade on smollm2 with a fresh edit log; the weights are restored after."""
    from tests_support import make_assistant

    a = make_assistant(smollm2, tmp_path)
    yield a
    a.service.close()
    a.service.stack.revert_all()
