"""Packed instruction batches: examples laid end to end in full-length rows, no padding but at an epoch's end.

The alternative to `gptkit.data.instruction_batches.InstructionBatches` when examples
are much shorter than the context and padding would waste most of each row. Epoch e
lays all examples end to end in the order `epoch_order(n, seed, e)`, each as its
inputs ids[:-1] with its own labels (so no target crosses from one example into
the next), and cuts the stream into rows of `row_length`; the last row of an epoch
is padded (x with `pad_id`, y with -100). Every epoch has the same number of rows,
the examples' total length being the same in any order, so row k of the whole run
is row k % R of epoch k // R, and a step's rows depend on (seed, step) alone, split
over micro-steps and processes as `InstructionBatches` splits its examples.

The trade: attention is causal but not per example, so a token attends to the
examples packed before it in its row; the labels still train only each example's
own response. An example longer than `row_length` continues in the next row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gptkit.data.instruction_batches import InstructionBatches, epoch_order, run_places
from gptkit.data.instruction_encoding import EncodedExample
from gptkit.errors import DataError
from gptkit.model.gpt import IGNORE_INDEX


class PackedInstructionBatches(InstructionBatches):
    """(x, y) of shape (batch_size, row_length) for (step, micro-step, process), rows of packed examples.

    The sizes, their checks and the global batch are `InstructionBatches`'; what a step
    trains on is rows here, not examples.
    """

    def __init__(
        self,
        encoded: Sequence[EncodedExample],
        batch_size: int,
        seed: int,
        pad_id: int,
        row_length: int,
        world_size: int = 1,
        accum_steps: int = 1,
    ) -> None:
        if row_length < 1:
            raise DataError(f"row_length must be at least 1, got {row_length}")
        super().__init__(encoded, batch_size, seed, pad_id, world_size, accum_steps)
        self.row_length = row_length
        self.lengths = np.array([len(e.labels) for e in self.encoded], dtype=np.int64)
        self.rows_per_epoch = math.ceil(int(self.lengths.sum()) / row_length)
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def steps_for_epochs(self, epochs: float) -> int:
        """Steps that train on every row of `epochs` epochs (the last may run into the next)."""
        return math.ceil(epochs * self.rows_per_epoch / self.global_batch)

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order of the examples, where each ends in the epoch's stream)."""
        if epoch not in self._epochs:
            self._epochs = {e: v for e, v in self._epochs.items() if e == epoch - 1}
            order = epoch_order(len(self.encoded), self.seed, epoch)
            self._epochs[epoch] = order, np.cumsum(self.lengths[order])
        return self._epochs[epoch]

    def row(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row k of the run: inputs and labels, padded to row_length at an epoch's end."""
        epoch, r = divmod(k, self.rows_per_epoch)
        order, ends = self.epoch(epoch)
        start = r * self.row_length
        stop = min(start + self.row_length, int(ends[-1]))
        x = np.full(self.row_length, self.pad_id, dtype=np.int64)
        y = np.full(self.row_length, IGNORE_INDEX, dtype=np.int64)
        j = int(np.searchsorted(ends, start, side="right"))  # the example the row starts in
        at = start
        while at < stop:
            e = self.encoded[order[j]]
            begin = int(ends[j]) - len(e.labels)
            end = min(stop, int(ends[j]))
            x[at - start : end - start] = e.ids[at - begin : end - begin]
            y[at - start : end - start] = e.labels[at - begin : end - begin]
            at, j = end, j + 1
        return x, y

    def batch(self, step: int, micro_step: int = 0, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of shape (batch_size, row_length): micro-batch `micro_step` of process `rank`."""
        places = run_places(step, micro_step, rank, self.batch_size, self.world_size, self.accum_steps)
        rows = [self.row(k) for k in places]
        return torch.from_numpy(np.stack([x for x, _ in rows])), torch.from_numpy(np.stack([y for _, y in rows]))
