"""`wandb`: the run's figures in a Weights & Biases run, one W&B run per gptkit run.

Needs the `wandb` package (`pip install -e ".[wandb]"`). `WANDB_MODE=offline`
writes the run under `run_dir/wandb/` with no network (`wandb sync` uploads it
later); online it needs `wandb login` first, as wandb itself does.

A resume continues the same W&B run: its id is kept in `run_dir/wandb.json`
with the last step it was sent. W&B cannot take back what it was sent, so steps
up to that one are not sent again: a resume replays them exactly (the same
losses, float for float), so what W&B holds is already right, and each step
appears once, in order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.callbacks.scalars import ScalarLogger, import_optional
from gptkit.training.train_state import CallbackContext, TrainerView

if TYPE_CHECKING:
    from gptkit.registry import Registry

STATE_FILE = "wandb.json"


class WandbParams(ComponentParams):
    project: str = Field("gptkit", min_length=1, description="W&B project.")
    entity: str | None = Field(None, description="W&B team or user; None: the logged-in default.")
    run_name: str | None = Field(None, description="W&B run name; None: the run directory's name.")
    tags: list[str] = Field(default_factory=list)
    mode: str | None = Field(None, description="online, offline or disabled; None: $WANDB_MODE, else wandb's default.")


class WandbLogger(ScalarLogger):
    def __init__(self, context: CallbackContext, project: str = "gptkit", entity: str | None = None, run_name: str | None = None,
                 tags: list[str] | None = None, mode: str | None = None) -> None:
        self.wandb = import_optional("wandb", "wandb", "wandb")
        self.context = context
        self.settings = {"project": project, "entity": entity, "name": run_name, "tags": tags or [], "mode": mode}
        self.run: Any = None
        self.held_through = 0  # the last step the W&B run held when this attempt started

    @property
    def state_path(self) -> Path:
        return self.context.run_dir / STATE_FILE

    def remember(self, step: int) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": self.run.id, "sent_through": step}))
        os.replace(tmp, self.state_path)

    def write(self, step: int, scalars: dict[str, float], *, new_step: bool) -> None:
        if self.run is None or step <= self.held_through:
            return
        self.run.log(scalars, step=step)
        if new_step:
            self.remember(step)

    @hookimpl
    def gptkit_train_start(self, trainer: TrainerView) -> None:
        if not self.context.is_main_process:
            return
        known = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        run_dir = self.context.run_dir
        self.run = self.wandb.init(
            project=self.settings["project"], entity=self.settings["entity"], name=self.settings["name"] or run_dir.name,
            tags=self.settings["tags"], mode=self.settings["mode"], dir=str(run_dir), config=self.context.config,
            id=known.get("id"), resume="allow",
        )
        self.held_through = int(known.get("sent_through", 0))
        if not known:
            self.remember(0)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "wandb", WandbLogger, params=WandbParams, description="Log the figures to a Weights & Biases run (offline too)")
