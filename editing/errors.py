"""Named errors of the editing engine; the app maps them to messages for people."""

from __future__ import annotations


class EditingError(Exception):
    """Base class of every error the editing engine raises on purpose."""


class InvalidEditRequest(EditingError, ValueError):
    """The edit request itself is malformed."""


class SubjectNotInPrompt(InvalidEditRequest):
    def __init__(self, subject: str, prompt: str) -> None:
        super().__init__(f"subject {subject!r} does not occur in prompt {prompt!r}")
        self.subject, self.prompt = subject, prompt


class EmptyTarget(InvalidEditRequest):
    def __init__(self) -> None:
        super().__init__("the new target is empty or only whitespace")


class TargetTooLong(InvalidEditRequest):
    def __init__(self, n_tokens: int, limit: int) -> None:
        super().__init__(f"the new target is {n_tokens} tokens long; at most {limit} are allowed")
        self.n_tokens, self.limit = n_tokens, limit


class PromptTooLong(InvalidEditRequest):
    def __init__(self, n_tokens: int, limit: int) -> None:
        super().__init__(f"the prompt is {n_tokens} tokens long; at most {limit} are allowed")
        self.n_tokens, self.limit = n_tokens, limit


class UnsupportedArchitecture(EditingError):
    def __init__(self, model_type: str, known: list[str]) -> None:
        super().__init__(
            f"no ModelSpec entry for model_type {model_type!r}; add one to editing/spec.py "
            f"(known: {', '.join(sorted(known))})"
        )
        self.model_type = model_type


class LayerOutOfRange(EditingError, ValueError):
    def __init__(self, layer: int, n_layers: int) -> None:
        super().__init__(f"layer {layer} is outside 0..{n_layers - 1}")


class DeltaMismatch(EditingError):
    """A stored delta does not fit the loaded model (shape, fingerprint or checksum)."""


class NoKnowledgeNeurons(EditingError):
    """KN found no neuron whose attribution stood out on enough of the fact's prompts."""

    def __init__(self) -> None:
        super().__init__("no knowledge neurons were found for this fact (no neuron's attribution stood out on "
                         "enough of its prompts); KN cannot edit it — try ROME")


class KeysTooClose(EditingError, ValueError):
    """Two facts of one batch are stored under (nearly) the same key — the same subject at the
    start of both prompts — so no single update can write two different values there."""

    def __init__(self, first: str, second: str, cosine: float) -> None:
        self.first, self.second, self.cosine = first, second, cosine
        super().__init__(f"{first!r} and {second!r} are stored under nearly the same key (cosine {cosine:.3f} in the "
                         "solve's metric), so one update cannot write both: apply them as two edits, or import them "
                         "in separate files")
