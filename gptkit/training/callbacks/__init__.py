"""gptkit's built-in training callbacks.

Each is an object whose `@hookimpl` methods are named after the training events
in `gptkit.hookspecs`; each file registers its callback under the "callback"
kind. They act on the main process only and write into the run
directory:

- `console`: live progress display and closing summary (prints only);
- `metrics`: ``metrics.jsonl`` and ``train.log``;
- `loss_plot`: ``loss.png``, drawn from ``metrics.jsonl``;
- `samples`: ``samples.txt``;
- `early_stopping`: asks the trainer to stop;
- `csv`, `tensorboard`, `wandb`: the same figures for experiment trackers
  (``metrics.csv``, ``tensorboard/``, a W&B run), continued across resumes.
"""

from gptkit.training.callbacks.console import ConsoleCallback, shared_console
from gptkit.training.callbacks.early_stopping import EarlyStoppingCallback
from gptkit.training.callbacks.loss_plot import LossPlotCallback
from gptkit.training.callbacks.metrics import MetricsCallback
from gptkit.training.callbacks.samples import SamplesCallback

__all__ = [
    "ConsoleCallback",
    "EarlyStoppingCallback",
    "LossPlotCallback",
    "MetricsCallback",
    "SamplesCallback",
    "shared_console",
]
