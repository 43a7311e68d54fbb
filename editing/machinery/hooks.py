"""The one hook utility: read or rewrite module inputs/outputs during a forward pass.

Every hook the engine installs goes through ``hook_output`` / ``hook_input`` (``Trace`` and
``TraceDict`` are built on them).  A PyTorch hook belongs to the module, not to the pass, and
one model serves many threads at once (chat answers, an edit, key statistics, a trace), so each
hook here acts only in the thread that installed it: a forward pass running in any other thread
goes through untouched, as if the hook were not there.  The thread is the pass's identity
because a module's hooks run in the thread that called it, and every computation in Amend runs
its passes in the thread that set it up.  The wrapper takes any arguments: a hook removed while
another thread's pass is between reading the hook table and calling it may be called with the
other calling convention (PyTorch reads ``with_kwargs`` after the hook list), and must still do
nothing there.

Hooks are always removed on exit, also when the forward pass raises.  ``stop=True`` ends the
forward pass right after the (last) traced module has run, which is how statistics skip the
upper layers; ``StopForward`` is raised in the owner's pass only.

A module's output may be a tensor or a tuple whose first element is the hidden state;
``edit_output`` sees and returns that first tensor only, and the tuple is rebuilt around it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

EditFn = Callable[[torch.Tensor, str], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; swallowed by the tracer."""


def _owned(fn: Callable[..., Any]) -> Callable[..., Any]:
    owner = threading.get_ident()

    def hook(*args: Any) -> Any:
        if threading.get_ident() != owner:
            return None  # another request's pass: leave it alone
        return fn(*args)

    return hook


def hook_output(module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> RemovableHandle:
    """``fn(module, args, output)`` (or ``fn(module, args, kwargs, output)``) after ``module``
    runs in this thread's passes; a non-None return replaces the output."""
    return module.register_forward_hook(_owned(fn), with_kwargs=with_kwargs)


def hook_input(module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> RemovableHandle:
    """``fn(module, args)`` (or ``fn(module, args, kwargs)``) before ``module`` runs in this
    thread's passes; a non-None return replaces the arguments."""
    return module.register_forward_pre_hook(_owned(fn), with_kwargs=with_kwargs)


class Hooks(AbstractContextManager["Hooks"]):
    """Handles removed together on exit: ``with Hooks(hook_output(m, f), ...): model(x)``."""

    def __init__(self, *handles: RemovableHandle) -> None:
        self.handles = list(handles)

    def add(self, handle: RemovableHandle) -> None:
        self.handles.append(handle)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False


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
        self._hooks = Hooks()
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

            self._hooks.add(hook_output(module, hook, with_kwargs=True))

    def __getitem__(self, path: str) -> Record:
        return self.records[path]

    def close(self) -> None:
        self._hooks.close()

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
