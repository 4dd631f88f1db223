"""The built-in training callbacks, driven through a real pluggy manager by a fake trainer.

The trainer here is a plain object with the `TrainerView` fields and a tiny real
model; what is checked is what lands on disk (and on a captured console).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pluggy
import pytest
import torch
from PIL import Image
from rich.console import Console

import gptkit.hookspecs
from gptkit import GPTModel, ModelConfig, RegistryError, build_registry
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.samplers import Temperature, TopK
from gptkit.training.callbacks import (
    ConsoleCallback,
    EarlyStoppingCallback,
    LossPlotCallback,
    MetricsCallback,
    SamplesCallback,
    loss_plot,
)
from gptkit.training.train_state import (
    CallbackContext,
    EvalMetrics,
    StepMetrics,
    TrainState,
    TrainSummary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["console", "metrics", "loss_plot", "samples", "early_stopping"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    # Dropout on, so sampling in train mode would draw from the global RNG.
    return GPTModel(ModelConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.1))


class FakeTrainer:
    """What a callback may see of the trainer (`gptkit.training.train_state.TrainerView`)."""

    def __init__(self, context: CallbackContext, model: GPTModel, state: TrainState | None = None) -> None:
        self.context = context
        self.model = model
        self.state = state or TrainState()
        self.last_checkpoint: Path | None = None
        self.stop_requests: list[str] = []

    def request_stop(self, reason: str) -> None:
        self.stop_requests.append(reason)
        self.state.stop_reason = reason

    def save_checkpoint(self) -> Path:
        self.last_checkpoint = self.context.run_dir / f"step_{self.state.step:08d}"
        return self.last_checkpoint


def make_context(run_dir: Path, tokenizer: Tokenizer, main: bool = True, total_steps: int | None = 20) -> CallbackContext:
    return CallbackContext(
        run_dir=run_dir, total_steps=total_steps, is_main_process=main,
        tokenizer=tokenizer, samplers=[Temperature(0.8), TopK(20)],
    )


def manager_with(*callbacks: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("gptkit")
    pm.add_hookspecs(gptkit.hookspecs)
    for cb in callbacks:
        pm.register(cb)
    return pm


def step_metrics(step: int, loss: float, mfu: float | None = 0.25) -> StepMetrics:
    return StepMetrics(step=step, loss=loss, lr=6e-4, grad_norm=1.5, tokens_per_sec=1000.0,
                       mfu=mfu, tokens_seen=step * 64, elapsed=step * 0.5)


def do_steps(pm: pluggy.PluginManager, trainer: FakeTrainer, first: int, last: int, loss=lambda s: 10.0 / s) -> None:
    for s in range(first, last + 1):
        trainer.state.step, trainer.state.tokens_seen, trainer.state.elapsed = s, s * 64, s * 0.5
        pm.hook.gptkit_step_end(trainer=trainer, metrics=step_metrics(s, loss(s)))


def do_eval(pm: pluggy.PluginManager, trainer: FakeTrainer, val_loss: float) -> None:
    """Update the state as the trainer does (strict improvement), then call the hook."""
    st = trainer.state
    improved = val_loss < st.best_val_loss
    st.best_val_loss = min(st.best_val_loss, val_loss)
    st.evals_without_improvement = 0 if improved else st.evals_without_improvement + 1
    st.last_val_loss = val_loss
    pm.hook.gptkit_evaluate(trainer=trainer, metrics=EvalMetrics(st.step, val_loss, st.best_val_loss, improved))


def do_end(pm: pluggy.PluginManager, trainer: FakeTrainer, reason: str = "max_steps reached") -> TrainSummary:
    st = trainer.state
    summary = TrainSummary(st.step, st.tokens_seen, st.elapsed, 10.0 / max(st.step, 1), st.last_val_loss,
                           st.best_val_loss, reason, trainer.context.run_dir)
    pm.hook.gptkit_train_end(trainer=trainer, summary=summary)
    return summary


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def captured_console(terminal: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=200, color_system=None), buf


# --- registry -----------------------------------------------------------------------


def test_registry_builds_every_callback_and_refuses_unknown_params(tmp_path, tokenizer):
    registry = build_registry(plugin_dirs=[], entry_points=False)  # the built-ins register themselves
    assert set(NAMES) <= set(registry.names("callback"))
    context = make_context(tmp_path, tokenizer)
    classes = [ConsoleCallback, MetricsCallback, LossPlotCallback, SamplesCallback, EarlyStoppingCallback]
    for name, cls in zip(NAMES, classes):
        assert isinstance(registry.create("callback", name, context), cls)
    built = registry.create("callback", {"name": "samples", "every": 5, "seed": 3}, context)
    assert (built.every, built.seed, built.max_new_tokens) == (5, 3, 100)
    with pytest.raises(RegistryError, match="no_such_param"):
        registry.create("callback", {"name": "metrics", "no_such_param": 1}, context)
    with pytest.raises(RegistryError):
        registry.create("callback", {"name": "early_stopping", "monitor": "test"}, context)


# --- metrics ------------------------------------------------------------------------


def test_metrics_writes_jsonl_and_log(tmp_path, tokenizer, model):
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    pm = manager_with(MetricsCallback(trainer.context, log_every=5))
    pm.hook.gptkit_train_start(trainer=trainer)
    do_steps(pm, trainer, 1, 10)
    # Flushed per line: readable while the run is still going.
    assert len(records(tmp_path)) == 10
    do_eval(pm, trainer, 2.5)
    do_end(pm, trainer)

    recs = records(tmp_path)
    assert [r["type"] for r in recs] == ["train"] * 10 + ["eval", "end"]
    first = recs[0]
    assert first == {"type": "train", "step": 1, "loss": 10.0, "lr": 6e-4, "grad_norm": 1.5,
                     "tokens_per_sec": 1000.0, "mfu": 0.25, "tokens_seen": 64, "elapsed": 0.5}
    assert recs[9]["loss"] == pytest.approx(1.0)
    assert recs[10]["step"] == 10 and recs[10]["val_loss"] == 2.5 and recs[10]["improved"] is True
    assert recs[11]["step"] == 10 and recs[11]["stop_reason"] == "max_steps reached"

    log = (tmp_path / "train.log").read_text().splitlines()
    assert "start" in log[0]
    assert [line.split(" step ")[1].split()[0] for line in log if " step " in line and "loss" in line][:2] == ["5", "10"]
    assert any("eval step 10 val_loss 2.5000" in line for line in log)
    assert "end at step 10: max_steps reached" in log[-1]


def test_metrics_non_finite_values_are_null(tmp_path, tokenizer, model):
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    pm = manager_with(MetricsCallback(trainer.context))
    pm.hook.gptkit_train_start(trainer=trainer)
    pm.hook.gptkit_step_end(trainer=trainer, metrics=step_metrics(1, math.nan, mfu=None))
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and json.loads(line)["loss"] is None and json.loads(line)["mfu"] is None


def test_metrics_resume_drops_records_past_the_checkpoint(tmp_path, tokenizer, model):
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    pm = manager_with(MetricsCallback(trainer.context))
    pm.hook.gptkit_train_start(trainer=trainer)
    do_steps(pm, trainer, 1, 5)
    do_eval(pm, trainer, 3.0)
    do_steps(pm, trainer, 6, 8)
    do_eval(pm, trainer, 2.0)
    pm.hook.gptkit_exception(trainer=trainer, error=KeyboardInterrupt())
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"type": "train", "st')  # a line cut short by a kill

    # Resume from a checkpoint taken at step 6: steps 7, 8 and the eval at 8 were lost.
    resumed = FakeTrainer(trainer.context, model, TrainState(step=6, best_val_loss=3.0))
    pm2 = manager_with(MetricsCallback(resumed.context))
    pm2.hook.gptkit_train_start(trainer=resumed)
    do_steps(pm2, resumed, 7, 9)
    do_end(pm2, resumed)

    steps = [(r["type"], r["step"]) for r in records(tmp_path)]
    assert steps == [("train", s) for s in range(1, 6)] + [("eval", 5), ("train", 6)] + \
        [("train", s) for s in range(7, 10)] + [("end", 9)]
    log = (tmp_path / "train.log").read_text()
    assert "interrupted (KeyboardInterrupt) at step 8" in log
    assert "resume at step 6" in log and "dropped 4 metric records" in log
    assert not list(tmp_path.glob(".*.tmp"))


# --- loss plot ----------------------------------------------------------------------


def test_loss_plot_is_a_png_redrawn_at_each_evaluation(tmp_path, tokenizer, model):
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    # pluggy calls the last registered first: without tryfirst/trylast the plot would
    # be drawn before the metrics callback wrote the evaluation.
    pm = manager_with(MetricsCallback(trainer.context), LossPlotCallback(trainer.context))
    pm.hook.gptkit_train_start(trainer=trainer)
    plot = tmp_path / "loss.png"
    do_steps(pm, trainer, 1, 10)
    assert not plot.exists()  # only drawn at evaluations and at the end
    do_eval(pm, trainer, 2.0)
    first = plot.read_bytes()
    assert first.startswith(PNG_MAGIC)
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size == (800, 450)
    do_steps(pm, trainer, 11, 20)
    do_eval(pm, trainer, 1.0)
    second = plot.read_bytes()
    assert second.startswith(PNG_MAGIC) and second != first
    assert not list(tmp_path.glob(".*.tmp"))


def test_loss_plot_reads_whole_history_after_the_metrics_record(tmp_path, tokenizer, model, monkeypatch):
    drawn = []
    monkeypatch.setattr(loss_plot, "plot_losses", lambda history, *a: drawn.append(history))
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    pm = manager_with(MetricsCallback(trainer.context), LossPlotCallback(trainer.context))
    pm.hook.gptkit_train_start(trainer=trainer)
    do_steps(pm, trainer, 1, 4)
    do_eval(pm, trainer, 2.0)
    # The eval record was written before the plot read the file.
    assert drawn[-1].val_steps == [4] and drawn[-1].train_steps == [1, 2, 3, 4]

    resumed = FakeTrainer(trainer.context, model, TrainState(step=4))
    pm2 = manager_with(MetricsCallback(resumed.context), LossPlotCallback(resumed.context))
    pm2.hook.gptkit_train_start(trainer=resumed)
    do_steps(pm2, resumed, 5, 6)
    do_end(pm2, resumed)
    assert drawn[-1].train_steps == [1, 2, 3, 4, 5, 6] and drawn[-1].val_loss == [2.0]


def test_loss_plot_without_metrics_draws_nothing(tmp_path, tokenizer, model):
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    pm = manager_with(LossPlotCallback(trainer.context))
    do_eval(pm, trainer, 2.0)
    assert not (tmp_path / "loss.png").exists()


def test_ema_and_log_scale_choice():
    assert loss_plot.ema([4.0, 2.0], 0.5) == [4.0, 3.0]
    assert loss_plot.use_log_scale(loss_plot.History([1, 2], [11.0, 0.09]))
    assert not loss_plot.use_log_scale(loss_plot.History([1, 2], [3.0, 2.0]))


# --- samples ------------------------------------------------------------------------


def test_samples_are_reproducible_and_leave_training_untouched(tmp_path, tokenizer, model):
    console, buf = captured_console()
    trainer = FakeTrainer(make_context(tmp_path / "a", tokenizer), model)
    cb = SamplesCallback(trainer.context, max_new_tokens=20, seed=7, console=console)
    pm = manager_with(cb)
    model.train()
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    do_steps(pm, trainer, 1, 3)
    do_eval(pm, trainer, 2.0)  # every=0: sample after each evaluation
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training

    content = (tmp_path / "a" / "samples.txt").read_text()
    header = "=== step 3 (seed 7) ===\n"
    assert content.startswith(header) and content.endswith("\n\n")
    sample = content[len(header):-2]
    assert sample.strip() and "sample at step 3" in buf.getvalue()

    # Same seed and weights: same text, whoever generates it; another seed: other text.
    again = SamplesCallback(make_context(tmp_path / "b", tokenizer), max_new_tokens=20, seed=7, console=console)
    other = SamplesCallback(make_context(tmp_path / "c", tokenizer), max_new_tokens=20, seed=8, console=console)
    assert again.generate_text(model) == sample
    assert other.generate_text(model) != sample

    do_end(pm, trainer)  # step 3 was just sampled: no second sample for it
    assert (tmp_path / "a" / "samples.txt").read_text().count("=== step") == 1


def test_samples_every_n_steps_and_at_the_end_with_prompt(tmp_path, tokenizer, model):
    console, _ = captured_console()
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    pm = manager_with(SamplesCallback(trainer.context, every=2, prompt="Hello", max_new_tokens=5, console=console))
    do_steps(pm, trainer, 1, 5)
    do_eval(pm, trainer, 2.0)  # every > 0: evaluations do not sample
    do_end(pm, trainer)
    text = (tmp_path / "samples.txt").read_text()
    headers = [line for line in text.splitlines() if line.startswith("=== step")]
    assert headers == ["=== step 2 (seed 1337) ===", "=== step 4 (seed 1337) ===", "=== step 5 (seed 1337) ==="]
    assert text.split("\n")[1].startswith("Hello")


# --- early stopping -----------------------------------------------------------------


def run_early_stopping(tmp_path, tokenizer, model, val_losses, state=None, **params) -> FakeTrainer:
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model, state)
    pm = manager_with(EarlyStoppingCallback(trainer.context, **params))
    pm.hook.gptkit_train_start(trainer=trainer)
    for v in val_losses:
        do_eval(pm, trainer, v)
    return trainer


def test_early_stopping_on_target_train_loss(tmp_path, tokenizer, model):
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    pm = manager_with(EarlyStoppingCallback(trainer.context, target_loss=0.09, monitor="train"))
    do_steps(pm, trainer, 1, 3, loss=lambda s: 0.1)
    do_eval(pm, trainer, 0.01)  # val loss is not monitored
    assert trainer.stop_requests == []
    do_steps(pm, trainer, 4, 4, loss=lambda s: 0.08)
    assert len(trainer.stop_requests) == 1 and "train loss 0.0800" in trainer.stop_requests[0]


def test_early_stopping_on_target_val_loss(tmp_path, tokenizer, model):
    trainer = run_early_stopping(tmp_path, tokenizer, model, [0.5, 0.2], target_loss=0.1)
    assert trainer.stop_requests == []
    trainer = run_early_stopping(tmp_path, tokenizer, model, [0.5, 0.05], target_loss=0.1)
    assert len(trainer.stop_requests) == 1 and "val loss 0.0500" in trainer.stop_requests[0]


def test_early_stopping_patience(tmp_path, tokenizer, model):
    # Improves, then two evaluations without: patience 3 is not yet exhausted.
    assert run_early_stopping(tmp_path, tokenizer, model, [3.0, 2.0, 2.5, 2.0], patience=3).stop_requests == []
    stopped = run_early_stopping(tmp_path, tokenizer, model, [3.0, 2.0, 2.5, 2.0, 2.1], patience=3)
    assert len(stopped.stop_requests) == 1 and "patience 3" in stopped.stop_requests[0]
    # 1.95 beats 2.0, but not by more than min_delta.
    delta = run_early_stopping(tmp_path, tokenizer, model, [3.0, 2.0, 1.95], patience=1, min_delta=0.1)
    assert len(delta.stop_requests) == 1


def test_early_stopping_patience_survives_resume(tmp_path, tokenizer, model):
    state = TrainState(step=100, best_val_loss=2.0, evals_without_improvement=2)
    assert run_early_stopping(tmp_path, tokenizer, model, [2.5], state=state, patience=3).stop_requests
    state = TrainState(step=100, best_val_loss=2.0, evals_without_improvement=2)
    assert not run_early_stopping(tmp_path, tokenizer, model, [1.5], state=state, patience=3).stop_requests


def test_early_stopping_without_params_never_stops(tmp_path, tokenizer, model):
    assert run_early_stopping(tmp_path, tokenizer, model, [3.0] * 10).stop_requests == []


# --- console ------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", [False, True])
def test_console_runs_through_a_training_and_prints_the_summary(tmp_path, tokenizer, model, terminal):
    console, buf = captured_console(terminal)
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    cb = ConsoleCallback(trainer.context, refresh_every=2, plain_every=5, console=console)
    samples = SamplesCallback(trainer.context, every=3, max_new_tokens=3, console=console)
    # Registered last, so pluggy would call it first: the summary still comes after the final sample.
    pm = manager_with(MetricsCallback(trainer.context), LossPlotCallback(trainer.context), samples, cb)
    pm.hook.gptkit_train_start(trainer=trainer)
    do_steps(pm, trainer, 1, 10)
    do_eval(pm, trainer, 2.0)
    trainer.save_checkpoint()
    do_end(pm, trainer)
    assert cb.progress is None  # the live display was stopped

    out = buf.getvalue()
    assert "val loss 2.0000" in out and "training finished" in out
    assert "max_steps reached" in out and "0:00:05" in out
    order = ["sample at step 9", "val loss 2.0000", "sample at step 10", "training finished"]
    assert [out.index(text) for text in order] == sorted(out.index(text) for text in order)
    assert f"last checkpoint: {tmp_path / 'step_00000010'}" in out
    assert f"loss plot:       {tmp_path / 'loss.png'}" in out
    if not terminal:
        assert "\x1b" not in out  # no control sequences in a log file
        assert "step 5/20" in out and "step 10/20" in out and "mfu 25.0%" in out


def test_console_without_step_budget_and_mfu(tmp_path, tokenizer, model):
    console, buf = captured_console()
    trainer = FakeTrainer(make_context(tmp_path, tokenizer, total_steps=None), model)
    pm = manager_with(ConsoleCallback(trainer.context, plain_every=1, console=console))
    pm.hook.gptkit_train_start(trainer=trainer)
    pm.hook.gptkit_step_end(trainer=trainer, metrics=step_metrics(1, 3.0, mfu=None))
    out = buf.getvalue()
    assert "no step budget" in out and "step 1  " in out and "mfu n/a" in out and "eta" not in out


@pytest.mark.parametrize("terminal", [False, True])
def test_console_reports_keyboard_interrupt_and_leaves_the_resume_hint_to_the_command(tmp_path, tokenizer, model, terminal):
    console, buf = captured_console(terminal)
    trainer = FakeTrainer(make_context(tmp_path, tokenizer), model)
    cb = ConsoleCallback(trainer.context, console=console)
    pm = manager_with(cb)
    pm.hook.gptkit_train_start(trainer=trainer)
    do_steps(pm, trainer, 1, 3)
    pm.hook.gptkit_exception(trainer=trainer, error=KeyboardInterrupt())
    assert cb.progress is None
    out = buf.getvalue()
    # The train command prints the hint, once, knowing whether a checkpoint was kept.
    assert "Interrupted at step 3" in out and "--resume" not in out

    buf.truncate(0)
    pm.hook.gptkit_exception(trainer=trainer, error=RuntimeError("boom"))
    assert "Training failed at step 3: RuntimeError: boom" in buf.getvalue()
    assert "--resume" not in buf.getvalue()


# --- other processes ----------------------------------------------------------------


def test_non_main_process_writes_and_prints_nothing(tmp_path, tokenizer, model):
    console, buf = captured_console()
    run_dir = tmp_path / "run"
    trainer = FakeTrainer(make_context(run_dir, tokenizer, main=False), model)
    ctx = trainer.context
    pm = manager_with(
        ConsoleCallback(ctx, plain_every=1, console=console), MetricsCallback(ctx, log_every=1), LossPlotCallback(ctx),
        SamplesCallback(ctx, every=1, max_new_tokens=2, console=console),
        EarlyStoppingCallback(ctx, target_loss=100.0, monitor="train", patience=1),
    )
    pm.hook.gptkit_train_start(trainer=trainer)
    do_steps(pm, trainer, 1, 3)
    do_eval(pm, trainer, 2.0)
    do_eval(pm, trainer, 3.0)
    do_end(pm, trainer)
    pm.hook.gptkit_exception(trainer=trainer, error=KeyboardInterrupt())
    assert not run_dir.exists()
    assert buf.getvalue() == ""
    assert trainer.stop_requests == []


def test_samples_continue_the_runs_sampling_prompt_unless_given_their_own(tmp_path, tokenizer):
    context = make_context(tmp_path, tokenizer)
    context.config = {"sampling": {"prompt": "def fib(n):"}}
    assert SamplesCallback(context).prompt == "def fib(n):"
    assert SamplesCallback(context, prompt="import os").prompt == "import os"
    context.config = {}
    assert SamplesCallback(context).prompt == ""
