"""The training loop. Scheduler, samplers and callbacks come in by name; the loop itself
never prints, plots or writes files — callbacks do, through `gptkit.hookspecs`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn

from config import RunConfig
from gptkit import (
    CheckpointError,
    DataError,
    GptkitError,
    GPTModel,
    Registry,
    hookspecs,
)
from gptkit.data.batches import BatchSampler, fixed_batches
from gptkit.data.classification import ClassificationBatches, fixed_labelled_batches
from gptkit.data.dataset import PreparedData
from gptkit.data.example_data import ExampleData
from gptkit.data.instruction_batches import (
    InstructionBatches,
    fixed_instruction_batches,
)
from gptkit.data.packed_batches import PackedInstructionBatches
from gptkit.dtypes import torch_dtype
from gptkit.generation.samplers import build_samplers
from gptkit.kernels import accelerate, training_memory
from gptkit.plugins import check_hook_names, default_registry
from gptkit.training import distributed
from gptkit.training.activation_checkpointing import apply_activation_checkpointing
from gptkit.training.checkpoint import (
    load_checkpoint,
    read_train_state,
    restore_optimizer_and_rng,
    save_checkpoint,
)
from gptkit.training.freezing import apply_trainable, trainable_summary
from gptkit.training.init_from import (
    InitSource,
    load_initial_weights,
    resolve_init_source,
)
from gptkit.training.lora import (
    ADAPTER_FILE,
    LoRASettings,
    base_sha256,
    load_adapter,
    wrap_lora,
)
from gptkit.training.objectives import Classification, NextToken, Objective
from gptkit.training.optimizers import build_optimizer
from gptkit.training.precision import training_dtype
from gptkit.training.train_state import (
    CallbackContext,
    EvalMetrics,
    StepMetrics,
    TrainState,
    TrainSummary,
)

# Dense bf16 peak FLOP/s of GPUs we can name; elsewhere set run.peak_flops for an MFU figure.
KNOWN_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}

class TrainingStopped(GptkitError):
    """The loss became NaN or infinite under the "stop" policy."""


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device `run.device` names; under torchrun, CUDA means this process's own GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GptkitError(f"run.device is '{name}' but no CUDA device is available; use run.device=cpu")
    if name.startswith("cuda:") and int(name.removeprefix("cuda:")) >= torch.cuda.device_count():
        raise GptkitError(f"run.device is '{name}' but this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GptkitError("run.device is 'mps' but no Apple GPU (MPS) is available; use run.device=cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:  # a name config.py let through but this torch does not know
        raise GptkitError(f"run.device '{name}': {str(err).splitlines()[0]}") from None
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device


def budget_reason(cfg: RunConfig, state: TrainState) -> str | None:
    """Which budget of `cfg` a run at `state` has used up, or None."""
    t, s = cfg.train, state
    if t.max_steps is not None and s.step >= t.max_steps:
        return f"reached train.max_steps={t.max_steps}"
    if t.max_tokens is not None and s.tokens_seen >= t.max_tokens:
        return f"reached train.max_tokens={t.max_tokens}"
    if t.max_time is not None and s.elapsed >= t.max_time:
        return f"reached train.max_time={t.max_time:g}s"
    return None


def peak_flops_for(device: torch.device, configured: float | None) -> float | None:
    if configured is not None:
        return configured
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        return next((v for k, v in KNOWN_PEAK_FLOPS.items() if k in gpu), None)
    return None


def flops_per_token(model: GPTModel) -> float:
    """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention scores."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    cfg = model.cfg
    return 6 * matmul_weights + 12 * cfg.n_layers * cfg.emb_dim * cfg.context_length


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device, registry: Registry | None = None) -> torch.optim.Optimizer:
    """`train.optimizer` over the parameters that train (AdamW, no decay on vectors, by default)."""
    return build_optimizer(registry or default_registry(), cfg.train.optimizer, model, cfg.train.lr, device, distributed.is_sharded(model))


@contextlib.contextmanager
def interrupts_between_steps() -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM (Ctrl-C, a scheduler's or `kill`'s stop) take the Ctrl-C path: save, then exit.

    They take it when the yielded check runs, between steps: an interrupt in the
    middle of one could save weights an optimizer step ahead of the step count, and
    the resumed run would differ from an uninterrupted one. A second signal interrupts at once.
    """
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt(f"signal {signum}")

    def check() -> None:
        if received:
            raise KeyboardInterrupt(f"signal {received[0]}")

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield lambda: None
        return
    try:
        yield check
    finally:
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)


def resumed_batch_note(world: int, saved_world: int, micro_batch: int, accum: int, global_batch: int) -> str:
    """What a resume under another process count changed about each process's batches."""
    return (
        f"resumed on {world} process{'es' if world > 1 else ''} (saved with {saved_world}): each now takes "
        f"{accum} micro-batch{'es' if accum > 1 else ''} of {micro_batch} per step, "
        f"keeping the run's global batch of {global_batch} sequences"
    )


class Trainer:
    """Trains `GPTModel` on prepared token files under a `RunConfig`.

    Under torchrun (a process group initialized, see `gptkit.training.distributed`) each
    process trains its share of every global batch; the losses, validation
    figures and stop decisions they report are the same on every process, and
    only process 0 runs callbacks that write or print (`context.is_main_process`).
    What differs between one process, DDP and FSDP is decided by the functions of
    `distributed`, so the loop below is written once, as for one process.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        data: PreparedData,
        tokenizer: Any,
        registry: Registry,
        resume_from: Path | None = None,
        extra_callbacks: Sequence[object] = (),
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.eot_id = int(tokenizer.eot_id)  # what example batches are padded with
        self.process = distributed.current()
        self.device = self._pick_device()
        self.init_source = self._init_source(resume_from)
        self.model = self._build_model(registry)
        self.flops_per_token = flops_per_token(self.model)  # counted before sharding splits the weights
        meta = self._restore_weights(resume_from)
        self.train_model = distributed.prepare(self.model, self.device, cfg.run.parallel)
        self._build_optimizer_and_restore(registry, resume_from, meta)
        distributed.seed_process(cfg.run.seed, self.state.step)
        self.forward_model = self._compile()
        self._size_batches(meta, resume_from)
        self._build_batches(data)
        self.schedule = self._build_schedule(registry)
        self.amp_dtype, self.precision_note = training_dtype(torch_dtype(cfg.run.dtype), self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.peak_flops = peak_flops_for(self.device, cfg.run.peak_flops)
        self._stop_reason: str | None = None
        self._build_callbacks(tokenizer, registry, extra_callbacks)

    # --- setup, in the order __init__ runs it --------------------------------------
    def _pick_device(self) -> torch.device:
        distributed.check_device(self.cfg.run.device, self.process)
        return pick_device(self.cfg.run.device, self.process.local_rank if self.process.active else None)

    def _init_source(self, resume_from: Path | None) -> InitSource | None:
        """Where a new run's first weights come from (train.init_from); a resumed run has its own,
        except a LoRA run's base, which its checkpoints leave where train.init_from found it."""
        given = self.cfg.train.init_from
        if given is None or (resume_from is not None and self.cfg.train.lora is None):
            return None
        return distributed.main_first(lambda: resolve_init_source(given))  # a hub name is fetched once

    def _build_model(self, registry: Registry) -> GPTModel:
        torch.manual_seed(self.cfg.run.seed)  # the same initial weights in every process
        m = self.cfg.model
        try:
            model = GPTModel(m, registry).to(self.device)
        except (RuntimeError, OverflowError, MemoryError, TypeError) as err:
            # torch says "can't allocate memory", or "Overflow when unpacking long" for sizes past int64.
            if not isinstance(err, MemoryError) and not any(w in str(err).lower() for w in ("allocate", "overflow", "out of memory")):
                raise  # anything else is no question of size: keep the traceback
            raise GptkitError(
                f"cannot build a model of model.vocab_size={m.vocab_size}, model.emb_dim={m.emb_dim}, "
                f"model.n_layers={m.n_layers}, model.context_length={m.context_length} on {self.device}: "
                f"{str(err).splitlines()[0] if str(err) else 'out of memory'}"
            ) from None
        if self.init_source is not None:
            load_initial_weights(model, self.init_source)
        self.base_sha256: str | None = None  # a LoRA run's base weights, which its adapters name
        if self.cfg.train.lora is not None:
            self.base_sha256 = base_sha256(model)
            wrap_lora(model, LoRASettings.from_config(self.cfg.train.lora))  # before accelerate: it reaches the base linears inside
            self.trainable = trainable_summary(model)
        else:
            self.trainable = apply_trainable(model, self.cfg.train.trainable, self.cfg.train.freeze)
        if self.cfg.run.kernels:
            accelerate(model)  # CPU speed paths; nothing changes on other devices
        apply_activation_checkpointing(model, self.cfg.run.activation_checkpointing)
        return model

    def _build_schedule(self, registry: Registry) -> Callable[[int], float]:
        total = self.total_steps
        scheduler = self.cfg.train.scheduler
        if total is None and scheduler.name != "constant":
            raise GptkitError(
                f"train.scheduler '{scheduler.name}' decays over train.max_steps, which is not set; "
                "set train.max_steps or use train.scheduler=constant"
            )
        return registry.create(
            "scheduler", scheduler, max_lr=self.cfg.train.lr, min_lr=self.cfg.train.min_lr, total_steps=total
        )

    @property
    def total_steps(self) -> int | None:
        """The step budget: train.max_steps, or the steps train.max_epochs takes if that ends sooner."""
        steps = [s for s in (self.cfg.train.max_steps, self.epoch_steps) if s is not None]
        return min(steps) if steps else None

    def _restore_weights(self, resume_from: Path | None) -> dict[str, Any]:
        """The train state and full weights of `resume_from`; returns its trainer.json ({} for a fresh run).

        Weights load into the whole model, before `distributed.prepare` may shard it.
        """
        self.state = TrainState()
        self.last_checkpoint: Path | None = resume_from
        self.last_checkpoint_step: int | None = None
        if resume_from is None:
            return {}
        if self.base_sha256 is not None:  # a LoRA checkpoint holds the adapter only; the base came from init_from
            self.state, meta = read_train_state(resume_from)
            load_adapter(self.model, resume_from / ADAPTER_FILE, self.base_sha256)
        else:
            self.state, meta = load_checkpoint(resume_from, self.model, restore_rng=False)
        self.last_checkpoint_step = self.state.step
        return meta

    def _build_optimizer_and_restore(self, registry: Registry, resume_from: Path | None, meta: dict[str, Any]) -> None:
        """The optimizer, over the parameters as prepared (a shard of each under FSDP), then
        the checkpoint's optimizer state and RNG; each process keeps its shard of the state."""
        self.optimizer = make_optimizer(self.model, self.cfg, self.device, registry)
        if resume_from is not None:
            load = functools.partial(distributed.load_optimizer_state, self.model, self.optimizer)
            restore_optimizer_and_rng(resume_from, meta, load)

    def _compile(self) -> nn.Module:
        """What forwards run through: the training module, compiled under run.compile."""
        return torch.compile(self.train_model) if self.cfg.run.compile else self.train_model

    def _size_batches(self, meta: dict[str, Any], resume_from: Path | None) -> None:
        """Batch sizes per process.

        A run's global batch (sequences per optimizer step) is fixed when it
        starts: train.batch_size x train.grad_accum_steps x processes. A resume
        under another process count keeps it, changing the accumulation steps
        (or, failing that, the micro-batch) per process; see `batch_note`.
        """
        t, world = self.cfg.train, self.process.world_size
        if resume_from is None:
            self.global_batch = t.batch_size * t.grad_accum_steps * world
            self.eval_batch = t.batch_size * world
        else:  # checkpoints from before multi-process training were single-process ones
            self.global_batch = int(meta.get("global_batch_size", t.batch_size * t.grad_accum_steps))
            self.eval_batch = int(meta.get("eval_batch_size", t.batch_size))
        try:
            self.micro_batch, self.accum = distributed.split_global_batch(self.global_batch, t.batch_size, world)
        except GptkitError as err:
            raise CheckpointError(f"cannot resume {resume_from}: {err}") from None
        self.batch_note: str | None = None
        if (self.micro_batch, self.accum) != (t.batch_size, t.grad_accum_steps):
            saved_world = meta.get("world_size", 1)
            self.batch_note = resumed_batch_note(world, saved_world, self.micro_batch, self.accum, self.global_batch)
        self.tokens_per_step = self.global_batch * self.cfg.model.context_length

    def _build_batches(self, data: PreparedData | ExampleData) -> None:
        """The samplers that hand out each process's training and validation batches, and the objective."""
        self.epoch_steps: int | None = None
        if isinstance(data, ExampleData):
            self._build_example_batches(data)
        else:
            self._build_window_batches(data)
        # Shares differ by a batch when the processes do not divide the set, and a
        # sharded model needs every process to run as many forwards.
        self.val_padding = distributed.extra_forwards(self.model, len(self.val_batches))

    def _build_window_batches(self, data: PreparedData) -> None:
        self.objective: Objective = NextToken(weight_by_tokens=False)
        t, ctx, world = self.cfg.train, self.cfg.model.context_length, self.process.world_size
        self.train_batches = BatchSampler(data.train, self.micro_batch, ctx, self.cfg.run.seed, world_size=world)
        # Fixed windows: every evaluation sees the same text, so val losses are comparable.
        self.val_batches = fixed_batches(
            data.val, self.micro_batch, ctx, t.eval_batches, self.cfg.run.seed + 1,
            rank=self.process.rank, world_size=world, global_batch=self.eval_batch,
        )

    def _build_example_batches(self, data: ExampleData) -> None:
        """Instruction or classification examples, in epochs; the whole validation split each evaluation."""
        d, world, rank, seed = self.cfg.data, self.process.world_size, self.process.rank, self.cfg.run.seed
        pad, ctx = self.eot_id, self.cfg.model.context_length
        sizes = {"batch_size": self.micro_batch, "seed": seed, "pad_id": pad, "world_size": world, "accum_steps": self.accum}
        if data.format == "classification":
            self.objective = Classification(self.model.out_head, len(data.classes))
            self.train_batches = ClassificationBatches(data.train, **sizes)
            self.val_batches = fixed_labelled_batches(data.val, self.micro_batch, pad, rank, world)
        else:
            self.objective = NextToken(weight_by_tokens=True)
            if d.packing:
                self.train_batches = PackedInstructionBatches(data.train, row_length=ctx, **sizes)
            else:
                self.train_batches = InstructionBatches(data.train, **sizes)
            self.val_batches = fixed_instruction_batches(data.val, self.micro_batch, pad, rank, world)
        if not data.val:
            raise DataError("the validation split is empty; raise data.val_fraction or add examples")
        if self.cfg.train.max_epochs is not None:
            self.epoch_steps = self.train_batches.steps_for_epochs(self.cfg.train.max_epochs)

    def _build_callbacks(self, tokenizer: Any, registry: Registry, extra_callbacks: Sequence[object]) -> None:
        self.context = CallbackContext(
            run_dir=self.run_dir,
            total_steps=self.total_steps,
            is_main_process=self.process.is_main,
            tokenizer=tokenizer,
            samplers=build_samplers(self.cfg.sampling.samplers, registry),
            config=self.cfg.model_dump(mode="json"),
        )
        self.hooks = pluggy.PluginManager(hookspecs.PROJECT)
        self.hooks.add_hookspecs(hookspecs)
        specs = self.cfg.train.callbacks
        names = [s.name for s in specs]
        # The same callback may be listed twice (two evaluate tasks): each registers under its place.
        labels = [f"callback {n}" if names.count(n) == 1 else f"callback {n} ({i + 1})" for i, n in enumerate(names)]
        callbacks = [(label, registry.create("callback", s, self.context)) for label, s in zip(labels, specs)]
        for label, callback in [*callbacks, *((f"extra callback {i}", c) for i, c in enumerate(extra_callbacks))]:
            self.hooks.register(callback, name=label)
            check_hook_names(self.hooks, callback, label)  # a misspelt hook would never be called

    # --- what callbacks may call -------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason

    def save_checkpoint(self) -> Path:
        """Save the whole model, optimizer and progress; every process must call this.

        Process 0 writes; a sharded model is first gathered from all processes,
        so the checkpoint holds full tensors and loads under any process count.
        Every process gets the path, or process 0's error.
        """
        model, optimizer = distributed.full_state(self.model, self.optimizer)
        extra = {
            "config": self.context.config,
            "world_size": self.process.world_size,
            "global_batch_size": self.global_batch,
            "eval_batch_size": self.eval_batch,
        }
        self.last_checkpoint = distributed.on_main(
            lambda: save_checkpoint(self.run_dir, model, optimizer, self.state, extra=extra, base_sha256=self.base_sha256)
        )
        self.last_checkpoint_step = self.state.step
        self.hooks.hook.gptkit_checkpoint(trainer=self, path=self.last_checkpoint)
        return self.last_checkpoint

    # --- the loop ----------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the validation set of all processes (each gets the same figure)."""
        return self.evaluate_with_scores()[0]

    @torch.no_grad()
    def evaluate_with_scores(self) -> tuple[float, dict[str, float]]:
        """The validation loss and the objective's scores (a classifier's accuracy and F1)."""
        self.model.eval()
        try:
            sums: dict[str, float] = {}
            for batch in self.val_batches:
                with self.autocast():
                    for key, value in self.objective.eval_sums(self.forward_model, batch, self.device).items():
                        sums[key] = sums.get(key, 0.0) + value
            for _ in range(self.val_padding):
                with self.autocast():
                    self.forward_model(torch.zeros((1, self.cfg.model.context_length), dtype=torch.long, device=self.device))
            return self.objective.finish({key: distributed.total(value) for key, value in sorted(sums.items())})
        finally:
            self.model.train()

    def train_step(self, step: int) -> tuple[float, float, float]:
        """One optimizer step; returns (mean loss over the global batch, grad norm before clipping, lr).

        Also counts the step's input tokens (padding included) into `step_tokens`.
        """
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a group's own multiple (Muon's, a rule's)
        accum = self.accum
        total_loss = torch.zeros((), device=self.device)
        self.step_tokens = 0
        for micro in range(accum):
            batch = self.train_batches.batch(step, micro, self.process.rank)
            self.step_tokens += batch[0].numel() * self.process.world_size
            # Processes average their gradients on the last micro-step only.
            with distributed.gradient_sync(self.train_model, enabled=micro == accum - 1):
                with self.autocast():
                    loss = self.objective.loss(self.forward_model, batch, self.device)
                # Mean over micro-batches, so accumulation changes the batch, not the lr scale.
                self.scaler.scale(loss / accum).backward()
            total_loss += loss.detach()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip is not None else math.inf
        grad_norm = float(distributed.local_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)))
        # Equal micro-batches everywhere, so the mean of the processes' means is the global batch's mean.
        mean_loss = distributed.mean((total_loss / accum).item())
        if not math.isfinite(mean_loss) and self.cfg.train.nan_policy == "skip":
            self.optimizer.zero_grad(set_to_none=True)
            return mean_loss, grad_norm, lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm, lr

    def budget_reason(self) -> str | None:
        if self.epoch_steps is not None and self.state.step >= self.epoch_steps:
            return f"reached train.max_epochs={self.cfg.train.max_epochs:g} ({self.epoch_steps} steps)"
        return budget_reason(self.cfg, self.state)

    def stop_reason(self, check_interrupt: Callable[[], None] = lambda: None) -> str | None:
        """Why training stops before the next step, or None; raises KeyboardInterrupt on a pending signal.

        Under several processes the answer is agreed (`distributed.agree_to_stop`):
        one process's request or signal stops all, and the slowest clock is the run's time.
        """
        requested, self.state.elapsed, check_interrupt = distributed.agree_to_stop(
            self._stop_reason is not None, self.state.elapsed, check_interrupt
        )
        if requested and self._stop_reason is None:
            self._stop_reason = "another process requested a stop"
        reason = self._stop_reason or self.budget_reason()
        if reason is None:
            check_interrupt()
        return reason

    def run_evaluation(self) -> None:
        val_loss, scores = self.evaluate_with_scores()
        for extra in self.hooks.hook.gptkit_eval_scores(trainer=self):
            scores.update(extra or {})
        s = self.state
        improved = val_loss < s.best_val_loss
        s.best_val_loss = min(s.best_val_loss, val_loss)
        s.evals_without_improvement = 0 if improved else s.evals_without_improvement + 1
        s.last_val_loss = val_loss
        self.hooks.hook.gptkit_evaluate(
            trainer=self, metrics=EvalMetrics(s.step, val_loss, s.best_val_loss, improved, scores)
        )

    def _run_step(self) -> float:
        """`train_step`, timed, counted into the state and reported to callbacks; returns its loss."""
        started = time.perf_counter()
        loss, grad_norm, lr = self.train_step(self.state.step)
        if not math.isfinite(loss) and self.cfg.train.nan_policy == "stop":
            raise TrainingStopped(
                f"the training loss became {loss} at step {self.state.step + 1}; the last good "
                f"checkpoint is {self.last_checkpoint or 'none (no checkpoint yet)'}. Try a lower "
                "train.lr, a smaller train.grad_clip, run.dtype=bfloat16 instead of float16, or "
                "train.nan_policy=skip to drop such batches"
            )
        seconds = time.perf_counter() - started
        s = self.state
        s.step += 1
        s.tokens_seen += self.step_tokens
        s.elapsed += seconds
        tokens_per_sec = self.step_tokens / seconds
        mfu = tokens_per_sec * self.flops_per_token / (self.peak_flops * self.process.world_size) if self.peak_flops else None
        self.hooks.hook.gptkit_step_end(
            trainer=self, metrics=StepMetrics(s.step, loss, lr, grad_norm, tokens_per_sec, mfu, s.tokens_seen, s.elapsed)
        )
        return loss

    def _training_memory(self) -> contextlib.AbstractContextManager[Any]:
        # On CPU, steps reuse the pages freed by the step before (see gptkit.kernels.cpu_allocator).
        return training_memory(self.device) if self.cfg.run.kernels else contextlib.nullcontext()

    def _summary(self, reason: str, last_loss: float | None) -> TrainSummary:
        s = self.state
        return TrainSummary(
            steps=s.step,
            tokens_seen=s.tokens_seen,
            elapsed=s.elapsed,
            final_train_loss=last_loss,
            final_val_loss=s.last_val_loss,
            best_val_loss=s.best_val_loss if math.isfinite(s.best_val_loss) else None,
            stop_reason=reason,
            run_dir=self.run_dir,
        )

    def fit(self) -> TrainSummary:
        self.model.train()
        last_loss: float | None = None
        hook = self.hooks.hook
        with interrupts_between_steps() as check_interrupt, self._training_memory():
            try:
                hook.gptkit_train_start(trainer=self)
                while (reason := self.stop_reason(check_interrupt)) is None:
                    last_loss = self._run_step()
                    if self.state.step % self.cfg.train.eval_every == 0:
                        self.run_evaluation()
                if self.state.last_val_loss is None or self.state.step % self.cfg.train.eval_every:
                    self.run_evaluation()  # the final figure is always a fresh one
            except BaseException as error:
                hook.gptkit_exception(trainer=self, error=error)
                raise
        self.state.stop_reason = reason
        summary = self._summary(reason, last_loss)
        hook.gptkit_train_end(trainer=self, summary=summary)
        return summary
