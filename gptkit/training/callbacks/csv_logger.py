"""`csv`: the run's figures as `run_dir/metrics.csv`, one `step,name,value` row each.

One row per figure (a long table) rather than a column per figure: evaluation
scores come and go between runs, and every spreadsheet and dataframe pivots a
long table in one call. On a resume, rows past the checkpoint's step belong to
training that was lost and are dropped, so the file reads as one run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gptkit.atomic import replace_atomically
from gptkit.hookspecs import hookimpl
from gptkit.registry import NoParams
from gptkit.training.callbacks.scalars import ScalarLogger
from gptkit.training.train_state import CallbackContext, TrainerView

if TYPE_CHECKING:
    from gptkit.registry import Registry

CSV_FILE = "metrics.csv"
HEADER = ["step", "name", "value"]


def drop_rows_after(path: Path, step: int) -> None:
    if not path.is_file():
        return

    def write(tmp: Path) -> None:
        with path.open(newline="", encoding="utf-8") as src, tmp.open("w", newline="", encoding="utf-8") as dst:
            out = csv.writer(dst)
            out.writerow(HEADER)
            for row in csv.reader(src):
                # the header, and a row cut short when the run was killed mid-write, go
                if len(row) == 3 and row[0].isdigit() and int(row[0]) <= step:
                    out.writerow(row)
            dst.flush()
            os.fsync(dst.fileno())

    replace_atomically(path, write)


class CsvLogger(ScalarLogger):
    def __init__(self, context: CallbackContext) -> None:
        self.context = context
        self.file: TextIO | None = None

    @property
    def path(self) -> Path:
        return self.context.run_dir / CSV_FILE

    def write(self, step: int, scalars: dict[str, float], *, new_step: bool) -> None:
        if self.file is not None:
            csv.writer(self.file).writerows([step, name, repr(float(value))] for name, value in scalars.items())
            self.file.flush()

    @hookimpl
    def gptkit_train_start(self, trainer: TrainerView) -> None:
        if not self.context.is_main_process:
            return
        drop_rows_after(self.path, trainer.state.step)
        fresh = not self.path.is_file()
        self.file = self.path.open("a", newline="", encoding="utf-8")
        if fresh:
            csv.writer(self.file).writerow(HEADER)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "csv", CsvLogger, params=NoParams, description="Write each step's and evaluation's figures to metrics.csv (step,name,value)")
