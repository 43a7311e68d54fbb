"""The Inspect tab's service: where a model keeps a fact (causal tracing) and what each layer
would say (the logit lens), drawn as pictures for the page.

Computing is ``editing.inspection``'s; this service checks the person's input, runs the
computation under the model's read lock (chat keeps running beside it: the hooks are the
computation's own, ``editing.machinery.hooks``) and writes the picture.
"""

from __future__ import annotations

import time
from pathlib import Path

from agents.locks import RWLock
from editing.engine import Editor
from runtime.loader import LoadedModel

MAX_TRACE_SAMPLES = 10
MAX_TRACE_TOKENS = 64  # a trace runs tokens × samples rows per layer: its cost grows with the prompt's square
MAX_LENS_TOKENS = 256


class InspectError(ValueError):
    """Bad input to the Inspect tab; the message is meant for the person."""


class InspectionService:
    def __init__(self, loaded: LoadedModel, editor: Editor, lock: RWLock, out_dir: Path) -> None:
        self.loaded, self.editor, self.lock, self.out_dir = loaded, editor, lock, Path(out_dir)

    def _inspect_path(self, name: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir / f"{name}-{int(time.time() * 1000)}.png"

    def trace(self, prompt: str, subject: str, target: str | None = None, samples: int = 3,
              mark_layer: int | None = None, progress=None) -> tuple[Path, str]:
        """Causal-tracing heatmaps of ``prompt`` (PNG) and a one-paragraph reading of them."""
        from editing.inspection.plots import plot_trace, save
        from editing.inspection.tracing import causal_trace

        if not prompt.strip() or not subject.strip() or subject not in prompt:
            raise InspectError("Give a prompt and a subject that occurs in it.")
        if not 1 <= samples <= MAX_TRACE_SAMPLES:
            raise InspectError(f"Noise samples must be between 1 and {MAX_TRACE_SAMPLES}.")
        self._check_length(prompt, MAX_TRACE_TOKENS, "A causal trace")
        loaded = self.loaded
        with self.lock.read():
            result = causal_trace(loaded.model, loaded.tokenizer, prompt, subject, target or None,
                                  samples=samples, progress=progress, checks=self.editor.checks)
        path = self._inspect_path("trace")
        save(plot_trace(result, mark_layer), path)
        effect = result.effect("mlp")
        start, end = result.subject_range
        token, layer = divmod(int(effect[start:end].argmax()), effect.shape[1])
        summary = (f"Answer {result.answer.strip()!r}: P_clean = {result.p_clean:.3f}, P_corrupted = "
                   f"{result.p_corrupted:.3f}. The strongest MLP effect inside the subject is at token "
                   f"{result.tokens[start + token]!r}, layer {layer} (indirect effect {effect[start + token, layer]:.3f}).")
        return path, summary

    def lens(self, prompt: str, target: str | None = None, mark_layer: int | None = None) -> tuple[Path, str]:
        """Logit lens of ``prompt`` (PNG) and the automatic layer choice it implies."""
        from editing.inspection.lens import choose_layer, logit_lens
        from editing.inspection.plots import plot_lens, save

        if not prompt.strip():
            raise InspectError("Give a prompt.")
        self._check_length(prompt, MAX_LENS_TOKENS, "The logit lens")
        loaded = self.loaded
        with self.lock.read():
            result = logit_lens(loaded.model, loaded.tokenizer, prompt, target or None, spec=self.editor.spec)
        auto = choose_layer(result, self.editor.default_layer)
        path = self._inspect_path("lens")
        save(plot_lens(result, mark_layer if mark_layer is not None else auto), path)
        summary = (f"Top token per layer: {' · '.join(t.strip() or '␣' for t in result.top_tokens)}. "
                   f"Automatic layer choice (thesis Algorithm 2): **{auto}**; the model's default edit layer is "
                   f"{self.editor.default_layer}.")
        return path, summary

    def _check_length(self, prompt: str, limit: int, what: str) -> None:
        n = len(self.loaded.tokenizer(prompt[: 20 * limit], add_special_tokens=False).input_ids)
        if n > limit:
            raise InspectError(f"{what} takes prompts of at most {limit} tokens; this one has more.")
