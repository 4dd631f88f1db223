"""Training and validation batches: random windows of a token file, fixed by (seed, step).

`BatchSampler` draws the windows of each optimizer step as a pure function of
(seed, step, micro_step, rank), so a resumed or distributed run sees exactly the
batches it should; `fixed_batches` is the validation set, the same every time.
The tokens come from `gptkit.data.dataset.prepare_dataset`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from gptkit.data.shards import TokenSequence
from gptkit.errors import DataError


class BatchSampler:
    """Random (x, y) windows from a token file, fixed by (seed, step) and each window's place.

    An optimizer step trains on one list of windows, its global batch. Window i
    of step s depends on nothing else, so however the batch is split the step
    sees the same text: micro-batch m of process r (of `world_size`) takes
    windows [(m * world_size + r) * batch_size, ... + batch_size). Two processes
    with batch 2, one with batch 4, and one with batch 2 and two accumulation
    steps all train on the same four windows per step.

    No sampler state is carried from one batch to the next, so resuming at step
    N needs nothing but N.
    """

    def __init__(self, tokens: TokenSequence, batch_size: int, context_length: int, seed: int, world_size: int = 1) -> None:
        if batch_size < 1 or context_length < 1 or world_size < 1:
            raise DataError(
                f"batch_size, context_length and world_size must be at least 1, "
                f"got {batch_size}, {context_length} and {world_size}"
            )
        needed = context_length + 1
        if tokens.n_tokens < needed:
            raise DataError(
                f"token file {tokens.path} has {tokens.n_tokens} tokens; a window of context_length "
                f"{context_length} needs at least {needed}. Use more text or a shorter context."
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.context_length = context_length
        self.seed = seed
        self.world_size = world_size

    def window_offsets(self, step: int, start: int, stop: int) -> np.ndarray:
        """Start indices of windows [start, stop) of `step`, in [0, n_tokens - context_length - 1]."""
        # SHAKE-256 is fixed by a standard, whereas NumPy and PyTorch do not
        # promise the same random stream across releases: a run resumed after
        # an upgrade still sees the batches the original would have. Its output
        # is extendable (a longer digest starts with the shorter one), so window
        # i is the same however many are drawn. The ":0:0" ending was micro-step 0
        # of process 0 when each micro-step hashed its own tag; keeping it keeps
        # the windows of runs without accumulation what they were. The modulo
        # bias of 64-bit draws is below 2**-32 for any real corpus.
        tag = f"gptkit-batch:{self.seed}:{step}:0:0".encode()
        digest = hashlib.shake_256(tag).digest(8 * stop)[8 * start :]
        draws = np.frombuffer(digest, dtype="<u8")
        return (draws % np.uint64(self.tokens.n_tokens - self.context_length)).astype(np.int64)

    def offsets(self, step: int, micro_step: int = 0, rank: int = 0) -> np.ndarray:
        """Start indices of the windows of micro-batch `micro_step` on process `rank`."""
        if not 0 <= rank < self.world_size:
            raise DataError(f"rank {rank} is outside the {self.world_size} processes of this sampler (0 to {self.world_size - 1})")
        first = (micro_step * self.world_size + rank) * self.batch_size
        return self.window_offsets(step, first, first + self.batch_size)

    def windows(self, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (len(offsets), context_length); y is x shifted by one."""
        data = self.tokens.tokens
        span = self.context_length + 1
        # Contiguous slices read sequential pages of the memmap.
        stacked = np.stack([data[s : s + span] for s in offsets]).astype(np.int64)
        w = torch.from_numpy(stacked)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def batch(self, step: int, micro_step: int = 0, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of shape (batch_size, context_length): micro-batch `micro_step` of process `rank`."""
        return self.windows(self.offsets(step, micro_step, rank))


def fixed_batches(
    tokens: TokenSequence,
    batch_size: int,
    context_length: int,
    n_batches: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    global_batch: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same validation windows every time they are asked for: this process's share.

    The validation set is `n_batches` batches of `global_batch` windows
    (default batch_size * world_size, one micro-batch per process). Process
    `rank` takes the windows [rank * global_batch // world_size, (rank + 1) *
    global_batch // world_size) of each, in pieces of at most `batch_size`, so
    all processes together see the set once, however many there are.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside the {world_size} processes (0 to {world_size - 1})")
    sampler = BatchSampler(tokens, batch_size, context_length, seed)
    per_batch = global_batch if global_batch is not None else batch_size * world_size
    first, stop = rank * per_batch // world_size, (rank + 1) * per_batch // world_size
    return [
        sampler.windows(sampler.window_offsets(step, start, min(start + batch_size, stop)))
        for step in range(n_batches)
        for start in range(first, stop, batch_size)
    ]
