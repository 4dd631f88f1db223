"""Every hook a gptkit plugin can implement, in one place.

A plugin is a module (a file in `plugins/`, or a module named by an installed
distribution's `gptkit` entry point) that defines functions marked with
`gptkit.hookimpl` and named after the specs below. pluggy checks the names and
arguments when the plugin is registered, so a misspelt hook fails at load time
rather than being silently ignored.

Minimal plugin::

    from gptkit import ComponentParams, hookimpl

    class ScaledTanhParams(ComponentParams):
        scale: float = 1.0

    class ScaledTanh(torch.nn.Module): ...

    @hookimpl
    def gptkit_register_components(registry):
        registry.register("activation", "scaled_tanh",
                          lambda scale: ScaledTanh(scale), params=ScaledTanhParams,
                          description="tanh(x) * scale")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gptkit.registry import Registry

PROJECT = "gptkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gptkit_register_components(registry: Registry) -> None:
    """Add components to `registry` with `registry.register(kind, name, factory, ...)`.

    Called once per plugin, before the first name is looked up. Registering a
    name that is already taken raises unless `override=True` is passed.

    What each kind's factory is called with (the component's own parameters,
    validated against `params`, come as extra keyword arguments):

    - ``norm``:       ``factory(dim)`` -> ``nn.Module`` mapping (..., dim) to (..., dim)
    - ``activation``: ``factory()`` -> elementwise ``nn.Module``
    - ``position``:   ``factory(cfg)`` -> ``gptkit.layers.PositionEncoding``
    - ``attention``:  ``factory(cfg)`` -> ``nn.Module`` with
      ``forward(x, position=None, start_pos=0, kv_cache=None)``
    - ``ffn``:        ``factory(cfg, activation)`` -> ``nn.Module``
    - ``block``:      ``factory(cfg, attention, ffn, norm1, norm2)`` -> ``nn.Module``
      with the attention's forward signature

    ``cfg`` is the validated `gptkit.ModelConfig`. Modules mark the linear layer
    that writes into the residual stream with ``is_residual_projection = True``
    so GPT-2's scaled initialisation finds it.
    """


# --- Training events -------------------------------------------------------------
# Callbacks are objects (built from the "callback" registry kind) whose methods are
# marked with `@hookimpl` and named after these specs; the trainer registers them
# with its own pluggy manager and calls each event in turn. The loop itself knows
# nothing of terminals, files or pictures: all of that lives in callbacks.
#
# `trainer` is a `gptkit.train_state.TrainerView`: `.model`, `.state`,
# `.context`, `.request_stop(reason)` and `.save_checkpoint() -> Path`.


@hookspec
def gptkit_train_start(trainer: Any) -> None:
    """Before the first step (also after a resume: `trainer.state.step` may be > 0)."""


@hookspec
def gptkit_step_end(trainer: Any, metrics: Any) -> None:
    """After each optimizer step, with a `gptkit.train_state.StepMetrics`."""


@hookspec
def gptkit_evaluate(trainer: Any, metrics: Any) -> None:
    """After each validation pass, with a `gptkit.train_state.EvalMetrics`."""


@hookspec
def gptkit_checkpoint(trainer: Any, path: Any) -> None:
    """After a checkpoint directory `path` was written completely."""


@hookspec
def gptkit_train_end(trainer: Any, summary: Any) -> None:
    """Once, when training stops for any reason but an exception, with a `TrainSummary`."""


@hookspec
def gptkit_exception(trainer: Any, error: BaseException) -> None:
    """When training is interrupted by an exception or Ctrl-C, before it propagates."""
