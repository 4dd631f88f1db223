"""Several processes training one model: `torchrun --nproc_per_node=N main.py ...`.

torchrun starts N copies of the program and tells each its place through the
environment (RANK, WORLD_SIZE, LOCAL_RANK). `init_distributed` joins them into
one process group (gloo on CPU, NCCL on CUDA, each process on cuda:LOCAL_RANK);
`prepare` makes the model keep its copies in step:

- "ddp": every process holds the whole model; gradients are averaged after each
  backward pass (`DistributedDataParallel`).
- "fsdp": parameters, gradients and optimizer state are split across processes
  and gathered layer by layer when needed (FSDP2, `fully_shard`), for models that
  do not fit one device.

Everything else here is what the trainer and `main.py` need to agree across
processes: the mean of a number, a stop decision, work done by process 0 first
(tokenizing, creating the run directory) with its outcome, error included, sent
to the others, and full (unsharded) state for checkpoints, so a checkpoint
loads under any process count. Each function also works for one process on its
own (doing nothing, or the one-process thing), so the training loop is written once.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as tdist
from torch import nn

from gptkit.errors import ConfigError, GptkitError

T = TypeVar("T")

# Waits in `main_first`/`on_main` last as long as process 0's work (tokenizing a
# large corpus takes minutes), far beyond NCCL's 10-minute default, so such
# messages travel through a CPU (gloo) group of their own with a long timeout.
CONTROL_TIMEOUT = timedelta(hours=2)
_control_group: Any = None


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the group; one process on its own is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # a process group is initialized (also with a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_is_main() -> bool:
    """Whether this is process 0, readable before the group exists (to silence the others early)."""
    return int(os.environ.get("RANK", "0")) == 0


def current() -> ProcessInfo:
    if not tdist.is_available() or not tdist.is_initialized():
        return ProcessInfo()
    return ProcessInfo(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True)


def init_distributed(device_type: str) -> ProcessInfo:
    """Join the process group torchrun set up; a no-op for a process started on its own."""
    global _control_group
    if not launched_by_torchrun() or tdist.is_initialized():
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GptkitError(
                f"process with LOCAL_RANK {local_rank} has no GPU of its own (this machine shows "
                f"{torch.cuda.device_count()}); start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        tdist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        tdist.init_process_group("gloo")
    _control_group = tdist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return current()


def shutdown_distributed() -> None:
    global _control_group
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
    _control_group = None


# --- agreeing across processes ------------------------------------------------------


def _all_reduce(values: list[float], op: Any) -> list[float]:
    if current().world_size == 1:
        return values
    # NCCL reduces only GPU tensors; gloo takes CPU ones.
    nccl = "nccl" in str(tdist.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(tensor, op=op)
    return tensor.tolist()


def mean(value: float) -> float:
    """The mean of `value` over all processes (itself when there is one)."""
    return _all_reduce([value], tdist.ReduceOp.SUM)[0] / current().world_size


def total(value: float) -> float:
    """The sum of `value` over all processes."""
    return _all_reduce([value], tdist.ReduceOp.SUM)[0]


def maximum(*values: float) -> list[float]:
    """The largest of each value over all processes, in one message."""
    return _all_reduce(list(values), tdist.ReduceOp.MAX)


def agree_to_stop(
    requested: bool, elapsed: float, check_interrupt: Callable[[], None]
) -> tuple[bool, float, Callable[[], None]]:
    """Whether any process requested a stop, the slowest clock, and a check that raises
    KeyboardInterrupt when any process has a pending signal; all in one message.

    A signal may reach one process a step before another, and only process 0's
    callbacks request stops, so each process's own view would split the group.
    One process on its own gets its own figures and its own check back.
    """
    if current().world_size == 1:
        return requested, elapsed, check_interrupt
    try:
        check_interrupt()
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    requested_anywhere, interrupted_anywhere, slowest = maximum(float(requested), float(interrupted), elapsed)

    def check_anywhere() -> None:
        if interrupted_anywhere:
            raise KeyboardInterrupt("interrupted in at least one process")

    return bool(requested_anywhere), slowest, check_anywhere


def barrier() -> None:
    if current().world_size > 1:
        tdist.barrier(group=_control_group)


def _outcome_from_main(outcome: object) -> object:
    box = [outcome]
    tdist.broadcast_object_list(box, src=0, group=_control_group)
    return box[0]


@dataclass(frozen=True)
class _Failed:
    message: str


def _done_on_main(work: Callable[[], T], share_result: bool) -> T:
    """Process 0 does `work`, then sends its result (or None) or its failure to the others."""
    try:
        result = work()
    except Exception as err:
        _outcome_from_main(_Failed(str(err)))
        raise
    _outcome_from_main(result if share_result else None)
    return result


def _from_main() -> object:
    received = _outcome_from_main(None)
    if isinstance(received, _Failed):
        raise GptkitError(received.message)
    return received


def on_main(work: Callable[[], T]) -> T:
    """Process 0 does `work`; every process gets its result, or raises its error.

    The others get a failure as a `GptkitError` with process 0's message (they
    print nothing, and leave with the exit code of a user error, as process 0 does for one).
    """
    if current().world_size == 1:
        return work()
    if current().is_main:
        return _done_on_main(work, share_result=True)
    return _from_main()  # type: ignore[return-value]


def main_first(work: Callable[[], T]) -> T:
    """Process 0 does `work` first, then the others (e.g. tokenize once, then read the cache)."""
    if current().world_size == 1:
        return work()
    if current().is_main:
        return _done_on_main(work, share_result=False)
    _from_main()
    return work()


# --- the model across processes ------------------------------------------------------


def check_device(device_name: str, info: ProcessInfo) -> None:
    if info.world_size > 1 and device_name.startswith("cuda:"):
        raise ConfigError(
            f"run.device={device_name} names one GPU, but torchrun started {info.world_size} processes; "
            "use run.device=cuda (each process takes cuda:LOCAL_RANK)"
        )


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    # No buffer sync before each forward: the model's buffers (masks, RoPE tables) are
    # computed identically by every process and never trained.
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def shard_model(model: nn.Module, device: torch.device) -> None:
    """FSDP2: shard each transformer block, then the rest (embeddings, final norm, head), in place.

    A block is the unit gathered for its forward and freed after it, so at most
    about one block's full weights exist at a time besides the root's. The tied
    embedding and output head both live in the root group, so they stay one tensor.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (tdist.get_world_size(),))
    # FSDP warns when a forward returns a view (the model's logits can be one): an in-place
    # op on it would skip a backward hook. Nothing here edits model outputs in place
    # (training takes the loss; generation runs without backward), so the warning is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def prepare(model: nn.Module, device: torch.device, parallel: str) -> nn.Module:
    """The module to train `model` through: DDP's wrapper, or `model` itself, sharded
    in place under `parallel="fsdp"`; without a process group, `model` untouched.

    Call it after loading full weights (a sharded model holds only its share) and
    before making the optimizer (which must see the sharded parameters).
    """
    if not current().active:
        return model
    if parallel == "fsdp":
        shard_model(model, device)
        return model
    return wrap_ddp(model, device)


def seed_process(seed: int, step: int) -> None:
    """Processes other than 0 reseed, so their dropout masks are their own.

    A checkpoint holds process 0's random state; the step makes a resumed run's
    masks differ from those its first steps drew.
    """
    info = current()
    if info.rank > 0:
        torch.manual_seed(seed + info.rank + info.world_size * step)


def extra_forwards(model: nn.Module, forwards: int) -> int:
    """How many forwards this process must add to the `forwards` it runs so all run as many.

    A sharded model gathers weights from every process in each forward, so a process
    that stopped early would leave the others waiting; an unsharded one needs none.
    Every process must call this (the counts are compared).
    """
    if not is_sharded(model):
        return 0
    return int(maximum(forwards)[0]) - forwards


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside `enabled=False`, backward passes accumulate local gradients without communicating.

    Used on all micro-steps but the last of an accumulated step: averaging
    across processes once per optimizer step gives the same sum for 1/accum of the traffic.
    """
    if enabled:
        yield
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
    else:
        yield


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly distributed one (FSDP's grad norm is a replicated DTensor)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


# --- full state of a sharded model, for checkpoints ----------------------------------


def _tied_duplicates(model: nn.Module) -> set[str]:
    """Names under which an already-named parameter appears again (a tied output head)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter name behind each index of `optimizer.state_dict()` (its order of parameters)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The whole model and optimizer state of a sharded model, on process 0's CPU.

    Every process must call this (it gathers shards); the others get empty dicts.
    The optimizer state comes back keyed by parameter index, as a one-process
    `optimizer.state_dict()` is, so the checkpoint format does not depend on how
    the run was split.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state: dict[str, Any] = get_model_state_dict(model, options=options)
    optim_state = cast(dict[str, Any], get_optimizer_state_dict(model, optimizer, options=options))
    if not current().is_main:
        return {}, {}
    tied = _tied_duplicates(model)
    model_state = {k: v for k, v in model_state.items() if k not in tied}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    by_index = {
        "state": {index[name]: value for name, value in optim_state["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]} for group in optim_state["param_groups"]
        ],
    }
    return model_state, by_index


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Give a sharded model's optimizer a full, index-keyed state dict (as checkpoints hold it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = _param_names(model, optimizer)
    by_name = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, cast(Any, by_name), options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Give `optimizer` a full, index-keyed state dict (as checkpoints hold it), sharded or not."""
    if is_sharded(model):
        load_full_optimizer_state(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[nn.Module | Mapping[str, torch.Tensor], torch.optim.Optimizer | dict[str, Any]]:
    """What a checkpoint saves: the model and optimizer themselves, or a sharded model's
    full state gathered to process 0 (every process must call this then)."""
    if is_sharded(model):
        return gather_full_state(model, optimizer)
    return model, optimizer


# --- batch sizes across process counts ------------------------------------------------


def split_global_batch(global_batch: int, batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) per process that make `global_batch` sequences per step.

    The configured micro-batch is kept when it divides each process's share
    (accumulation then changes: 2 processes -> 1 doubles it); otherwise the
    largest micro-batch below the configured one that divides the share, so
    memory use per process never grows.
    """
    share, left = divmod(global_batch, world_size)
    if left:
        raise GptkitError(
            f"the run's global batch of {global_batch} sequences per step does not split evenly over "
            f"{world_size} processes; use a process count that divides {global_batch}"
        )
    micro = max(d for d in range(1, min(batch_size, share) + 1) if share % d == 0)
    return micro, share // micro
