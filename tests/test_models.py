"""The built-in models load offline, from their packages and from the converted cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from runtime.loader import ModelLoadError, _locate_gguf, converted_dir, load_model
from runtime.profiles import BUILTIN_PROFILES


def test_a_built_in_model_loads_with_no_hub_reachable():
    """No model hub at run time: with the hub's address pointing nowhere and offline mode not
    set, the default model's path (load, tokenize, answer) still works — nothing asks the network."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    script = ("from runtime import load_model\nfrom runtime.conversation import Conversation\n"
              "loaded = load_model('smollm2', device='cpu')\n"
              "print(Conversation(loaded).answer('Where is the Eiffel Tower?'))")
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Paris" in out.stdout


@pytest.mark.parametrize("alias", ["smollm2", pytest.param("gemma3-270m", marks=pytest.mark.slow)])
def test_gguf_and_converted_cache_give_identical_logits(alias):
    loaded = load_model(alias, device="cpu")  # converts once, then reads the safetensors folder
    assert Path(loaded.source) == converted_dir(alias)
    gguf = _locate_gguf(BUILTIN_PROFILES[alias])
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, loaded.model(ids).logits)


def test_unknown_model_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_model("no-such-model", device="cpu")


def test_cuda_refused_clearly_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model("smollm2", device="cuda")


def test_profiles(smollm2):
    assert smollm2.model.config.model_type == "llama"  # the production model's class
    assert smollm2.profile.chat_format == "template"
    assert smollm2.dtype == torch.float32 and smollm2.device.type == "cpu"


def test_gemma3_profile_suppresses_image_placeholders():
    from runtime.profiles import profile_for

    assert "<start_of_image>" in BUILTIN_PROFILES["gemma3-270m"].suppress_tokens
    profile = profile_for("/models/gemma-3-1b-it", has_chat_template=True, vocab={"<start_of_image>": 255999})
    assert profile.suppress_tokens == ("<start_of_image>", "<end_of_image>")
    assert not BUILTIN_PROFILES["smollm2"].suppress_tokens


def test_llama3_profile_stops_on_both_end_ids():
    from runtime.profiles import profile_for

    vocab = {"<|end_of_text|>": 128001, "<|eot_id|>": 128009, "hello": 5}
    profile = profile_for("/models/Llama3-Chinese-8B-Instruct", has_chat_template=True, vocab=vocab)
    assert profile.chat_format == "template"
    assert set(profile.extra_eos_tokens) == {"<|eot_id|>", "<|end_of_text|>"}


def test_hyperparameters_reject_unknown_keys():
    from pydantic import ValidationError

    from editing.hparams import hparams_for, parse_overrides

    assert hparams_for("rome", {"v_steps": 10}).v_steps == 10
    with pytest.raises(ValidationError):
        hparams_for("rome", {"v_stpes": 10})
    with pytest.raises(ValueError, match="unknown method"):
        hparams_for("memit")
    # --set KEY=VALUE on the command lines: JSON values, else text
    assert parse_overrides(["v_lr=0.5", "chat_template=false", "update_rule=original", "prefix_lengths=[5]"]) == {
        "v_lr": 0.5, "chat_template": False, "update_rule": "original", "prefix_lengths": [5]}
    assert hparams_for("rome", parse_overrides(["prefix_lengths=[5]"])).prefix_lengths == (5,)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["v_lr"])
