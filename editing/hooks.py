"""One small hook utility: read or rewrite module inputs/outputs during a forward pass.

``Trace`` watches one module, ``TraceDict`` several.  Hooks are always removed on exit,
also when the forward pass raises.  ``stop=True`` ends the forward pass right after the
(last) traced module has run, which is how statistics skip the upper layers.

A module's output may be a tensor or a tuple whose first element is the hidden state;
``edit_output`` sees and returns that first tensor only, and the tuple is rebuilt around it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

EditFn = Callable[[torch.Tensor, str], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; swallowed by the tracer."""


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x: Any, value: torch.Tensor) -> Any:
    return (value, *x[1:]) if isinstance(x, tuple) else value


@dataclass
class Record:
    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


class TraceDict(AbstractContextManager["TraceDict"]):
    """Trace several modules of ``model`` by path.

    After the forward pass, ``trace[path].input`` / ``.output`` hold the first tensor of the
    module's input / output (detached clones unless ``retain_grad``).
    """

    def __init__(
        self,
        model: nn.Module,
        paths: Iterable[str],
        *,
        retain_input: bool = False,
        retain_output: bool = True,
        retain_grad: bool = False,
        edit_output: EditFn | None = None,
        stop: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.records: dict[str, Record] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for i, path in enumerate(self.paths):
            record = self.records[path] = Record()
            module = model.get_submodule(path)
            is_last = i == len(self.paths) - 1

            def hook(_m, args, kwargs, output, path=path, record=record, is_last=is_last):
                if retain_input:
                    x = args[0] if args else next(iter(kwargs.values()))
                    record.input = x if retain_grad else x.detach().clone()
                if edit_output is not None:
                    output = _replace_first(output, edit_output(_first(output), path))
                if retain_output:
                    y = _first(output)
                    record.output = y if retain_grad else y.detach().clone()
                if stop and is_last:
                    raise StopForward
                return output

            self._handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def __getitem__(self, path: str) -> Record:
        return self.records[path]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is StopForward


class Trace(TraceDict):
    """Trace a single module: ``with Trace(model, path) as t: model(x)`` then ``t.output``."""

    def __init__(self, model: nn.Module, path: str, **kwargs: Any) -> None:
        super().__init__(model, [path], **kwargs)
        self.record = self.records[path]

    @property
    def input(self) -> torch.Tensor | None:
        return self.record.input

    @property
    def output(self) -> torch.Tensor | None:
        return self.record.output
