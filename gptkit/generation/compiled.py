"""torch.compile for generation, with a bounded number of compiled graphs.

torch.compile traces the model into a graph for the shapes and values it sees,
and traces again whenever a guard on them fails. Generation calls the model with
each group's prompt length, then with a KV cache that grows by one position per
token: compiled with static shapes, that is a new graph for every length.
Compiled with dynamic shapes, lengths, batch sizes and `start_pos` become
symbols, and a handful of graphs serve every call: one for prompts of two or
more tokens, one for a decode step, and a few specialised ones (sizes 0 and 1
are always specialised, so a one-token prompt or a batch of one gets its own).

Beyond `recompile_limit` graphs torch runs the model eagerly, and if compiling
fails (no C++ compiler, an operation the backend cannot handle) so does
`CompiledForward`, each with a warning: a model that keeps recompiling is slow,
never wrong or crashed.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptkit.layers.kv_cache import KVCache

# Generation needs at most six graphs per model shape, dtype and weight layout (three for a
# batch of one, three for larger batches): room for two or three models in one process.
RECOMPILE_LIMIT = 16


def _forward(model: nn.Module, idx: torch.Tensor, start_pos: int, kv_cache: KVCache | None, last_only: bool) -> torch.Tensor:
    return model(idx, start_pos=start_pos, kv_cache=kv_cache, last_only=last_only)


@functools.cache
def _compiled(backend: str | Callable[..., Any]) -> Callable[..., torch.Tensor]:
    # The model is an argument, not the compiled object: graphs are shared by every
    # model of one shape, and no cache here keeps a model alive.
    return torch.compile(_forward, backend=backend, dynamic=True)


class CompiledForward:
    """`model(idx, start_pos=..., kv_cache=..., last_only=...)`, compiled with dynamic shapes.

    `backend` is torch.compile's: "inductor" generates C++ (or Triton) kernels;
    tests pass a cheaper one. It compiles on first use, not here.
    """

    def __init__(self, model: nn.Module, backend: str | Callable[..., Any] = "inductor", recompile_limit: int = RECOMPILE_LIMIT) -> None:
        self.model = model
        self.backend = backend
        self.recompile_limit = recompile_limit
        if not torch._dynamo.is_dynamo_supported() and backend not in _failed:
            _give_up(backend, "torch.compile is not supported on this Python or platform")

    def __call__(self, idx: torch.Tensor, *, start_pos: int = 0, kv_cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        if self.backend not in _failed:
            try:
                # Patched per call, not globally: the trainer's compiled model keeps torch's defaults.
                with torch._dynamo.config.patch(recompile_limit=self.recompile_limit):
                    # Token ids sliced from a longer history have its row stride; a copy keeps one graph.
                    return _compiled(self.backend)(self.model, idx.contiguous(), start_pos, kv_cache, last_only)
            except torch._dynamo.exc.TorchDynamoException as err:
                # Compiling failed before the graph ran, so the KV cache is as it was: run eagerly.
                cause = getattr(err, "inner_exception", None) or err
                _give_up(self.backend, f"{type(cause).__name__}: {(str(cause).strip() or '?').splitlines()[0]}")
        return self.model(idx, start_pos=start_pos, kv_cache=kv_cache, last_only=last_only)


# Backends that failed once are not tried again in this process: each try costs a compile.
_failed: set[str | Callable[..., Any]] = set()


def _give_up(backend: str | Callable[..., Any], reason: str) -> None:
    _failed.add(backend)
    warnings.warn(f"torch.compile failed ({reason}); running the model without it", RuntimeWarning, stacklevel=2)
