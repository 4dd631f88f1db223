"""gptkit's own training callbacks, registered under the "callback" kind like any plugin's.

The trainer builds each configured callback with
``registry.create("callback", spec, context)``, i.e. ``Class(context, **params)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptkit.callbacks.console import ConsoleCallback, ConsoleParams
from gptkit.callbacks.early_stopping import EarlyStoppingCallback, EarlyStoppingParams
from gptkit.callbacks.loss_plot import LossPlotCallback, LossPlotParams
from gptkit.callbacks.metrics import MetricsCallback, MetricsParams
from gptkit.callbacks.samples import SamplesCallback, SamplesParams
from gptkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from gptkit.registry import Registry


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    callbacks = [
        ("console", ConsoleCallback, ConsoleParams, "Live progress bar and figures in the terminal, summary at the end"),
        ("metrics", MetricsCallback, MetricsParams, "Append each step and evaluation to metrics.jsonl and train.log"),
        ("loss_plot", LossPlotCallback, LossPlotParams, "Redraw loss.png from metrics.jsonl at each evaluation and the end"),
        ("samples", SamplesCallback, SamplesParams, "A seeded text sample now and then, into samples.txt"),
        ("early_stopping", EarlyStoppingCallback, EarlyStoppingParams, "Stop at a target loss, or after `patience` evals without a new best"),
    ]
    for name, factory, params, description in callbacks:
        registry.register("callback", name, factory, params=params, description=description)
