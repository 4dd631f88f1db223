"""The training loop. Scheduler, samplers and callbacks come in by name; the loop itself
never prints, plots or writes files — callbacks do, through `gptkit.hookspecs`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn

from config import RunConfig
from gptkit import GPTModel, GptkitError, Registry, hookspecs
from gptkit.checkpoint import load_checkpoint, save_checkpoint
from gptkit.data import BatchSampler, PreparedData, fixed_batches
from gptkit.plugins import check_hook_names
from gptkit.train_state import CallbackContext, EvalMetrics, StepMetrics, TrainState, TrainSummary

# Dense bf16 peak FLOP/s of GPUs we can name; elsewhere set run.peak_flops for an MFU figure.
KNOWN_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainingStopped(GptkitError):
    """The loss became NaN or infinite under the "stop" policy."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GptkitError(f"run.device is '{name}' but no CUDA device is available; use run.device=cpu")
    return torch.device(name)


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


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights only: decaying norms, biases and gains
    pulls them towards zero for no regularising benefit."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2),
        fused=fused, foreach=None if fused else True,
    )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or `kill`'s stop) takes the Ctrl-C path: save, then exit."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Trainer:
    """Trains `GPTModel` on prepared token files under a `RunConfig`."""

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
        self.device = pick_device(cfg.run.device)
        torch.manual_seed(cfg.run.seed)
        self.model = GPTModel(cfg.model, registry).to(self.device)
        self.forward_model: nn.Module = torch.compile(self.model) if cfg.run.compile else self.model
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        total = cfg.train.max_steps
        if total is None and cfg.train.scheduler.name != "constant":
            raise GptkitError(
                f"train.scheduler '{cfg.train.scheduler.name}' decays over train.max_steps, which is not set; "
                "set train.max_steps or use train.scheduler=constant"
            )
        self.schedule = registry.create(
            "scheduler", cfg.train.scheduler, max_lr=cfg.train.lr, min_lr=cfg.train.min_lr, total_steps=total
        )
        self.state = TrainState()
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step: int | None = None
        self._stop_reason: str | None = None
        if resume_from is not None:
            self.state, _ = load_checkpoint(resume_from, self.model, self.optimizer)
            self.last_checkpoint, self.last_checkpoint_step = resume_from, self.state.step
        t = cfg.train
        self.tokens_per_step = t.batch_size * t.grad_accum_steps * cfg.model.context_length
        self.train_batches = BatchSampler(data.train, t.batch_size, cfg.model.context_length, cfg.run.seed)
        # Fixed windows: every evaluation sees the same text, so val losses are comparable.
        self.val_batches = fixed_batches(data.val, t.batch_size, cfg.model.context_length, t.eval_batches, cfg.run.seed + 1)
        self.amp_dtype = DTYPES[cfg.run.dtype]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.flops_per_token = flops_per_token(self.model)
        self.peak_flops = peak_flops_for(self.device, cfg.run.peak_flops)
        self.context = CallbackContext(
            run_dir=run_dir,
            total_steps=total,
            is_main_process=True,
            tokenizer=tokenizer,
            samplers=[registry.create("sampler", s) for s in cfg.sampling.samplers],
            config=cfg.model_dump(mode="json"),
        )
        self.hooks = pluggy.PluginManager(hookspecs.PROJECT)
        self.hooks.add_hookspecs(hookspecs)
        callbacks = [(f"callback {s.name}", registry.create("callback", s, self.context)) for s in cfg.train.callbacks]
        for label, callback in [*callbacks, *((f"extra callback {i}", c) for i, c in enumerate(extra_callbacks))]:
            self.hooks.register(callback, name=label)
            check_hook_names(self.hooks, callback, label)  # a misspelt hook would never be called

    # --- what callbacks may call -------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason

    def save_checkpoint(self) -> Path:
        self.last_checkpoint = save_checkpoint(
            self.run_dir, self.model, self.optimizer, self.state, extra={"config": self.context.config}
        )
        self.last_checkpoint_step = self.state.step
        self.hooks.hook.gptkit_checkpoint(trainer=self, path=self.last_checkpoint)
        return self.last_checkpoint

    # --- the loop ----------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        try:
            losses = []
            for x, y in self.val_batches:
                with self.autocast():
                    _, loss = self.forward_model(x.to(self.device), y.to(self.device))
                losses.append(loss.item())
            return sum(losses) / len(losses)
        finally:
            self.model.train()

    def train_step(self, step: int) -> tuple[float, float, float]:
        """One optimizer step; returns (mean loss, grad norm before clipping, lr)."""
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = self.cfg.train.grad_accum_steps
        total_loss = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self.train_batches.batch(step, micro)
            with self.autocast():
                _, loss = self.forward_model(x.to(self.device), y.to(self.device))
            # Mean over micro-batches, so accumulation changes the batch, not the lr scale.
            self.scaler.scale(loss / accum).backward()
            total_loss += loss.detach()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        mean_loss = (total_loss / accum).item()
        if not math.isfinite(mean_loss) and self.cfg.train.nan_policy == "skip":
            self.optimizer.zero_grad(set_to_none=True)
            return mean_loss, float(grad_norm), lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, float(grad_norm), lr

    def budget_reason(self) -> str | None:
        t, s = self.cfg.train, self.state
        if t.max_steps is not None and s.step >= t.max_steps:
            return f"reached train.max_steps={t.max_steps}"
        if t.max_tokens is not None and s.tokens_seen >= t.max_tokens:
            return f"reached train.max_tokens={t.max_tokens}"
        if t.max_time is not None and s.elapsed >= t.max_time:
            return f"reached train.max_time={t.max_time:g}s"
        return None

    def run_evaluation(self) -> None:
        val_loss = self.evaluate()
        s = self.state
        improved = val_loss < s.best_val_loss
        s.best_val_loss = min(s.best_val_loss, val_loss)
        s.evals_without_improvement = 0 if improved else s.evals_without_improvement + 1
        s.last_val_loss = val_loss
        self.hooks.hook.gptkit_evaluate(
            trainer=self, metrics=EvalMetrics(s.step, val_loss, s.best_val_loss, improved)
        )

    def fit(self) -> TrainSummary:
        self.model.train()
        last_loss: float | None = None
        hook = self.hooks.hook
        with sigterm_as_interrupt():
            try:
                hook.gptkit_train_start(trainer=self)
                while (reason := self._stop_reason or self.budget_reason()) is None:
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
                    self.state.step += 1
                    self.state.tokens_seen += self.tokens_per_step
                    self.state.elapsed += seconds
                    last_loss = loss
                    tokens_per_sec = self.tokens_per_step / seconds
                    mfu = tokens_per_sec * self.flops_per_token / self.peak_flops if self.peak_flops else None
                    hook.gptkit_step_end(
                        trainer=self,
                        metrics=StepMetrics(self.state.step, loss, lr, grad_norm, tokens_per_sec, mfu, self.state.tokens_seen, self.state.elapsed),
                    )
                    if self.state.step % self.cfg.train.eval_every == 0:
                        self.run_evaluation()
                if self.state.last_val_loss is None or self.state.step % self.cfg.train.eval_every:
                    self.run_evaluation()  # the final figure is always a fresh one
            except BaseException as error:
                hook.gptkit_exception(trainer=self, error=error)
                raise
        self.state.stop_reason = reason
        summary = TrainSummary(
            steps=self.state.step,
            tokens_seen=self.state.tokens_seen,
            elapsed=self.state.elapsed,
            final_train_loss=last_loss,
            final_val_loss=self.state.last_val_loss,
            best_val_loss=self.state.best_val_loss if math.isfinite(self.state.best_val_loss) else None,
            stop_reason=reason,
            run_dir=self.run_dir,
        )
        hook.gptkit_train_end(trainer=self, summary=summary)
        return summary
