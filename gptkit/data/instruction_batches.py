"""Batches of encoded instruction examples, in epochs, fixed by (seed, step).

The run's examples come in epochs: epoch e is a permutation of all n examples,
drawn from (seed, e), and example k of the whole run (counting from 0 over every
step) is permutation(k // n)[k % n]. Step s trains on the examples
[s * G, (s + 1) * G) of that order, G being the global batch, split over
micro-steps and processes as `gptkit.data.batches.BatchSampler` splits its windows:
micro-batch m of process r takes the batch_size examples from
s * G + (m * world_size + r) * batch_size. So every example is seen once per
epoch, a step's examples depend on nothing but (seed, step), and resuming at step
N needs nothing but N, under any split of the same global batch.

Each batch is padded on the right to its longest example: x with `pad_id` (the
end-of-text id), y with -100, which the loss ignores. Right padding keeps every
real token at the position it would have alone (learned positions, RoPE) and,
attention being causal, no real token attends to padding. When padding would be most
of each row, `gptkit.data.packed_batches` packs examples end to end instead.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from gptkit.data.instruction_encoding import EncodedExample
from gptkit.errors import DataError
from gptkit.model.gpt import IGNORE_INDEX


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n), a function of (seed, epoch) alone."""
    # SHAKE-256, as BatchSampler uses: fixed by a standard, unlike NumPy's and
    # PyTorch's generators, so a run resumed after an upgrade keeps its order.
    tag = f"gptkit-instruction-epoch:{seed}:{epoch}".encode()
    keys = np.frombuffer(hashlib.shake_256(tag).digest(8 * n), dtype="<u8")
    return np.argsort(keys, kind="stable")


def run_places(step: int, micro_step: int, rank: int, batch_size: int, world_size: int, accum_steps: int) -> range:
    """Places in the run's order (counted over every step) of micro-batch `micro_step` of process `rank`."""
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside the {world_size} processes of this sampler (0 to {world_size - 1})")
    if not 0 <= micro_step < accum_steps:
        raise DataError(f"micro_step {micro_step} is outside the {accum_steps} micro-steps of a step (0 to {accum_steps - 1})")
    first = step * batch_size * world_size * accum_steps + (micro_step * world_size + rank) * batch_size
    return range(first, first + batch_size)


def pad_batch(examples: Sequence[EncodedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 of shape (len(examples), longest input): inputs ids[:-1], targets the labels."""
    width = max(len(e.labels) for e in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        x[row, : len(e.labels)] = torch.from_numpy(e.ids[:-1].astype(np.int64))
        y[row, : len(e.labels)] = torch.from_numpy(e.labels.astype(np.int64))
    return x, y


class InstructionBatches:
    """Training batches of instruction examples: (x, y) for (step, micro-step, process).

    The global batch is batch_size * world_size * accum_steps examples per step.
    """

    def __init__(
        self,
        encoded: Sequence[EncodedExample],
        batch_size: int,
        seed: int,
        pad_id: int,
        world_size: int = 1,
        accum_steps: int = 1,
    ) -> None:
        if batch_size < 1 or world_size < 1 or accum_steps < 1:
            raise DataError(
                f"batch_size, world_size and accum_steps must be at least 1, got {batch_size}, {world_size} and {accum_steps}"
            )
        if not encoded:
            raise DataError("no training examples to batch; expected at least one")
        self.encoded = list(encoded)
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.world_size = world_size
        self.accum_steps = accum_steps
        self._orders: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accum_steps

    def steps_for_epochs(self, epochs: float) -> int:
        """Steps that see every example `epochs` times (the last step may run into the next epoch)."""
        return math.ceil(epochs * len(self.encoded) / self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            # Consecutive steps read one or two epochs; older ones are never asked again.
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = epoch_order(len(self.encoded), self.seed, epoch)
        return self._orders[epoch]

    def indices(self, step: int, micro_step: int = 0, rank: int = 0) -> list[int]:
        """Which examples (positions in `encoded`) micro-batch `micro_step` of process `rank` trains on."""
        n = len(self.encoded)
        places = run_places(step, micro_step, rank, self.batch_size, self.world_size, self.accum_steps)
        return [int(self.order(k // n)[k % n]) for k in places]

    def batch(self, step: int, micro_step: int = 0, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of shape (batch_size, longest input in this micro-batch)."""
        return pad_batch([self.encoded[i] for i in self.indices(step, micro_step, rank)], self.pad_id)


def fixed_instruction_batches(
    encoded_val: Sequence[EncodedExample], batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation set as this process's batches: each example once, in order, the same every call.

    Process `rank` takes the examples [rank * n // world_size, (rank + 1) * n // world_size),
    in batches of at most `batch_size`, so the processes together cover the set once.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside the {world_size} processes (0 to {world_size - 1})")
    n = len(encoded_val)
    share = list(encoded_val[rank * n // world_size : (rank + 1) * n // world_size])
    return [pad_batch(share[i : i + batch_size], pad_id) for i in range(0, len(share), batch_size)]
