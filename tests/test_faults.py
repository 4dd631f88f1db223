"""Faults a training run survives: kills mid-write, refused writes, signals and NaN losses.

The checkpoint-write sweep runs in a child process (`python tests/test_faults.py
SWEEP_DIR`) that forks once per kill point, so torch is imported once for all
of them. Kill points are deterministic:

- *line* kills: SIGKILL just before the N-th line executed inside
  `gptkit/training/checkpoint.py` and `gptkit/atomic.py` during one save, for every N
  at which the files on disk differ from one line earlier (every distinct state);
- *byte* kills: RLIMIT_FSIZE = k with SIGXFSZ at its default action, so the
  process dies at byte k of whichever file it is writing (a torn file);
- *refused* writes: the same limit with SIGXFSZ ignored, so the write fails
  with EFBIG ("File too large"), a real OS error raised by the real write path.

Each is tried for a new step and for a step saved again (the set-aside path).
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import torch
from rich.console import Console
from torch.optim.optimizer import register_optimizer_step_post_hook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # as a script, the child imports gptkit from this checkout

from conftest import subprocess_env

import commands.train
import main
from gptkit import ModelConfig, reset_default_registry
from gptkit.model.gpt import GPTModel
from gptkit.plugins import PLUGIN_DIRS_ENV
from gptkit.training.checkpoint import (
    CHECKPOINTS,
    LATEST,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from gptkit.training.train_state import TrainState

WATCHED = {str(ROOT / "gptkit" / "checkpoint.py"), str(ROOT / "gptkit" / "atomic.py")}
# Pure in-memory helpers: killing inside them changes nothing on disk.
NOT_DISK = {"clean_state_dict", "optimizer_tensors", "optimizer_state_from", "rng_tensors", "io_reason",
            "<dictcomp>", "<listcomp>", "<genexpr>", "<setcomp>"}
FILES = ("model.safetensors", "optimizer.safetensors", "trainer.json")


# --- a tiny model trained by hand, the same in the child and in the test ------------------------


def tiny() -> tuple[GPTModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=64, emb_dim=16, n_layers=1, n_heads=2, context_length=8, drop_rate=0.0))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: GPTModel, optimizer: torch.optim.Optimizer, step: int) -> None:
    batch = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(step))
    _, loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# --- the child: one fork per kill point ---------------------------------------------------------


class LineKiller:
    """Counts lines run in the checkpoint modules; SIGKILLs this process before line `kill_at`.

    Counting (no `kill_at`), it also notes before which lines the files under
    `watch` differ from how they were one line earlier: killing before any other
    line leaves the same files as killing one line earlier, so only those are tried.
    """

    def __init__(self, kill_at: int | None = None, watch: Path | None = None) -> None:
        self.kill_at = kill_at
        self.watch = watch
        self.count = 0
        self.changed_before: list[int] = []
        self.last: object = None

    def __enter__(self) -> Self:
        sys.settrace(self.on_call)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)

    def on_call(self, frame: Any, event: str, arg: Any) -> Callable[..., Any] | None:
        code = frame.f_code
        return self.on_line if code.co_filename in WATCHED and code.co_name not in NOT_DISK else None

    def on_line(self, frame: Any, event: str, arg: Any) -> Callable[..., Any]:
        if event == "line":
            self.count += 1
            if self.count == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.watch is not None:
                now = files_state(self.watch)
                if now != self.last:
                    self.changed_before.append(self.count)
                self.last = now
        return self.on_line


def files_state(folder: Path) -> list[tuple[str, int, int]]:
    """What a reader of `folder` could tell apart: names, inodes (a rename or replace shows) and sizes."""
    return sorted((str(p.relative_to(folder)), (st := p.lstat()).st_ino, st.st_size) for p in folder.rglob("*"))


def in_fork(action: Callable[[], str], note: Path) -> tuple[str, str]:
    """Run `action` in a forked child: ("killed by SIG...", "") or ("finished"/"error", what it wrote to `note`)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        try:
            text, status = action(), 0
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            text, status = f"{type(err).__name__}: {err}", 3
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        note.write_text(text)
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    text = note.read_text() if note.exists() else ""
    note.unlink(missing_ok=True)
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}", text
    return ("finished" if os.WEXITSTATUS(status) == 0 else "error"), text


def sweep(out: Path) -> None:
    torch.set_num_threads(1)
    model, optimizer = tiny()
    train_step(model, optimizer, 1)
    template = out / "template"
    save_checkpoint(template, model, optimizer, TrainState(step=1))  # checkpoint A
    train_step(model, optimizer, 2)  # the state checkpoint B holds
    results = []
    lines: dict[str, int] = {}
    for scenario, step in (("new step", 2), ("same step", 1)):
        slug = scenario.replace(" ", "_")

        def save(run_dir: Path, step: int = step) -> Path:
            return save_checkpoint(run_dir, model, optimizer, TrainState(step=step))

        reference = out / f"{slug}-reference"
        shutil.copytree(template, reference)
        with LineKiller(watch=reference) as counter:
            save(reference)
        sizes = sorted((reference / CHECKPOINTS / f"step_{step:06d}" / f).stat().st_size for f in FILES[:2])
        # Before each line that follows a change on disk, and after the last line (a complete save).
        points: list[tuple[str, int]] = [("line", n) for n in (*counter.changed_before, counter.count + 1)]
        lines[scenario] = counter.count
        points += [("byte", k) for k in {1, *range(sizes[0] // 10, sizes[1], sizes[1] // 20)}]
        points += [("refused", k) for k in (1, sizes[0] // 2, sizes[0] + (sizes[1] - sizes[0]) // 2)]
        for mode, point in sorted(points):
            run_dir = out / f"{slug}-{mode}-{point:07d}"
            shutil.copytree(template, run_dir)

            def act(run_dir: Path = run_dir, mode: str = mode, point: int = point) -> str:
                if mode == "line":
                    with LineKiller(point):
                        save(run_dir)
                    return "saved"
                resource.setrlimit(resource.RLIMIT_FSIZE, (point, resource.RLIM_INFINITY))
                signal.signal(signal.SIGXFSZ, signal.SIG_DFL if mode == "byte" else signal.SIG_IGN)
                save(run_dir)
                return "saved"

            outcome, note = in_fork(act, out / "note.txt")
            results.append({"scenario": scenario, "step": step, "mode": mode, "point": point,
                            "run_dir": str(run_dir), "outcome": outcome, "note": note})
    (out / "results.json").write_text(json.dumps({"lines": lines, "points": results}, indent=1))


# --- the sweep, checked ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads((out / "results.json").read_text())


def checkpoint_bytes(checkpoint: Path) -> dict[str, bytes]:
    return {name: (checkpoint / name).read_bytes() for name in FILES}


def resumed_weights(checkpoint: Path, run_dir: Path) -> dict[str, torch.Tensor]:
    """Load `checkpoint`, train one more step, save it into `run_dir`: the weights after."""
    model, optimizer = tiny()
    state, _ = load_checkpoint(checkpoint, model, optimizer)
    train_step(model, optimizer, state.step + 1)
    saved = save_checkpoint(run_dir, model, optimizer, TrainState(step=state.step + 1))
    assert latest_checkpoint(run_dir) == saved
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sigkill_at_every_point_of_a_checkpoint_write_leaves_a_loadable_checkpoint(
    swept: tuple[Path, dict[str, Any]],
) -> None:
    out, found = swept
    results = found["points"]
    torch.set_num_threads(1)  # the resumed steps below are compared bit for bit
    for scenario, step in (("new step", 2), ("same step", 1)):
        slug = scenario.replace(" ", "_")
        ref_a = out / "template" / CHECKPOINTS / "step_000001"
        ref_b = out / f"{slug}-reference" / CHECKPOINTS / f"step_{step:06d}"
        expected = {"A": checkpoint_bytes(ref_a), "B": checkpoint_bytes(ref_b)}
        assert expected["A"] != expected["B"]
        after = {"A": resumed_weights(ref_a, out / f"{slug}-after-A"), "B": resumed_weights(ref_b, out / f"{slug}-after-B")}
        kills = [r for r in results if r["scenario"] == scenario and r["mode"] != "refused"]
        seen = {"A": 0, "B": 0}
        for r in kills:
            run_dir = Path(r["run_dir"])
            where = f"{scenario}, {r['mode']} {r['point']} ({r['outcome']}: {r['note']})"
            checkpoint = latest_checkpoint(run_dir)
            held = checkpoint_bytes(checkpoint)
            which = next((k for k, v in expected.items() if v == held), None)
            assert which is not None, f"torn checkpoint {checkpoint} after {where}"
            if r["outcome"] == "finished":
                assert which == "B", where
            else:
                assert r["outcome"] == "killed by " + ("SIGKILL" if r["mode"] == "line" else "SIGXFSZ"), where
            seen[which] += 1
            weights = resumed_weights(checkpoint, run_dir)
            assert all(torch.equal(weights[k], after[which][k]) for k in weights), where
            leftovers = sorted(p.name for p in (run_dir / CHECKPOINTS).iterdir() if p.name.startswith("."))
            assert leftovers == [], f"debris after resuming: {leftovers} ({where})"
        # The kill points span the write: some leave the old checkpoint, some the new one.
        assert seen["A"] > 5 and seen["B"] > 0, seen
        torn = [r for r in kills if r["mode"] == "byte" and r["outcome"] == "killed by SIGXFSZ"]
        assert len(torn) >= 8, "byte kills must land inside the files being written"
    lines = sum(found["lines"].values())
    by_mode = {m: sum(r["mode"] == m for r in results) for m in ("line", "byte")}
    print(f"\ncheckpoint-write kills survived: {by_mode['line']} at every distinct on-disk state of {lines} traced "
          f"lines + {by_mode['byte']} mid-file (byte offsets), over a new step and a step saved again")


def test_a_write_the_system_refuses_keeps_the_previous_checkpoint(swept: tuple[Path, dict[str, Any]]) -> None:
    out, found = swept
    results = found["points"]
    refused = [r for r in results if r["mode"] == "refused"]
    assert len(refused) == 6
    for r in refused:
        run_dir = Path(r["run_dir"])
        root = run_dir / CHECKPOINTS
        assert r["outcome"] == "error", r
        assert r["note"].startswith(f"CheckpointError: cannot write checkpoint {root / 'step_000'}"), r
        assert "File too large" in r["note"], r
        assert f"the latest complete checkpoint is still {root / 'step_000001'}" in r["note"], r
        assert (root / LATEST).read_text() == "step_000001\n"
        assert sorted(p.name for p in root.iterdir()) == [LATEST, "step_000001"], "no debris, nothing half-written"
        assert checkpoint_bytes(root / "step_000001") == checkpoint_bytes(out / "template" / CHECKPOINTS / "step_000001")


def test_latest_pointer_that_is_damaged_falls_back_to_the_newest_checkpoint(tmp_path: Path) -> None:
    model, optimizer = tiny()
    first = save_checkpoint(tmp_path, model, optimizer, TrainState(step=1))
    second = save_checkpoint(tmp_path, model, optimizer, TrainState(step=2))
    pointer = tmp_path / CHECKPOINTS / LATEST
    for damage in (b"step_000001\n", b"\xff\xfe garbage", b"../../../etc\n", b"step_000009\n"):
        pointer.write_bytes(damage)
        assert latest_checkpoint(tmp_path) == (first if damage == b"step_000001\n" else second)
    pointer.unlink()
    assert latest_checkpoint(tmp_path) == second


# --- the command line: refused writes, signals, NaN; each resumed run against an uninterrupted one ---

STEPS, EVERY = 30, 10
CLI_TINY = [
    "--set", "model.emb_dim=32", "--set", "model.n_heads=2", "--set", "model.n_layers=1",
    "--set", "model.context_length=16", "--set", "train.batch_size=2", "--set", "train.eval_batches=1",
    "--set", "run.dtype=float32", "--set", "train.eval_every=50",
]
FAULTS_PLUGIN = """
import math
import os
import time

import torch

from gptkit import ComponentParams, hookimpl


class FaultParams(ComponentParams):
    hold_at: int = 0  # at this step, wait until the file `release` exists (or a signal ends the process)
    release: str = ""
    poison_at: int = 0  # at this step, set the weights to NaN


class Faults:
    def __init__(self, context, hold_at=0, release="", poison_at=0):
        self.hold_at, self.release, self.poison_at = hold_at, release, poison_at

    @hookimpl
    def gptkit_step_end(self, trainer, metrics):
        if metrics.step == self.poison_at:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(math.nan)
        while metrics.step == self.hold_at and not os.path.exists(self.release):
            time.sleep(0.01)


@hookimpl
def gptkit_register_components(registry):
    registry.register("callback", "faults", Faults, params=FaultParams)
"""


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(400)))
    return path


@pytest.fixture()
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The `faults` callback, registered for runs in this process and in subprocesses given the folder."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "faults.py").write_text(FAULTS_PLUGIN)
    monkeypatch.setenv(PLUGIN_DIRS_ENV, str(folder))
    reset_default_registry()
    yield folder
    monkeypatch.delenv(PLUGIN_DIRS_ENV)
    reset_default_registry()


def cli_args(corpus: Path, out: Path, callbacks: str = '"metrics"') -> list[str]:
    return [
        *CLI_TINY, "--set", f"data.path={corpus}", "--set", f"data.cache_dir={corpus.parent / 'cache'}",
        "--set", f"run.out_dir={out}", "--set", "run.name=r", "--set", f"train.max_steps={STEPS}",
        "--set", f'train.callbacks=[{callbacks}, {{"name": "checkpoint", "every": {EVERY}}}]',
    ]


def faults_args(corpus: Path, out: Path, faults: str) -> list[str]:
    return cli_args(corpus, out, f'"metrics", {{"name": "faults", {faults}}}')


def run_in_process(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[int, str]:
    """main.run here: (exit code, its error output, one wide line per message)."""
    buffer = io.StringIO()
    monkeypatch.setattr(main, "err_console", Console(file=buffer, width=1000, no_color=True))
    return main.run(argv), buffer.getvalue()


def resume(monkeypatch: pytest.MonkeyPatch, run_dir: Path, *extra: str) -> None:
    """Continue `run_dir` with the plain callbacks (the faults plugin no longer needed)."""
    callbacks = f'train.callbacks=["metrics", {{"name": "checkpoint", "every": {EVERY}}}]'
    code, err = run_in_process(monkeypatch, ["--resume", str(run_dir), "--set", callbacks, *extra])
    assert code == 0, err


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if r["type"] == "train"}
    assert len(losses) == sum(r["type"] == "train" for r in records), "each step recorded once"
    return losses


@pytest.fixture(scope="module")
def straight(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The losses of an uninterrupted run: what every resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        code, err = run_in_process(mp, cli_args(corpus, out))
    assert code == 0, err
    losses = train_losses(out / "r")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def refuse_second_save(monkeypatch: pytest.MonkeyPatch, target: str, error: Callable[[str], OSError]) -> None:
    """The second checkpoint's `target` call fails with `error(path)` (after writing half the file)."""
    from gptkit.training import checkpoint

    calls = {"n": 0}
    if target == "save_file":
        real = checkpoint.save_file

        def failing_save_file(tensors: dict[str, torch.Tensor], path: Path, **kw: Any) -> None:
            real(tensors, path, **kw)
            calls["n"] += 1
            if calls["n"] == 3:  # model.safetensors of the second checkpoint
                with open(path, "r+b") as f:
                    f.truncate(Path(path).stat().st_size // 2)
                raise error(str(path))

        monkeypatch.setattr(checkpoint, "save_file", failing_save_file)
    else:
        real_mkdtemp = tempfile.mkdtemp

        def failing_mkdtemp(*args: Any, **kw: Any) -> str:
            if str(kw.get("dir", "")).endswith(CHECKPOINTS):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise error(str(kw["dir"]))
            return real_mkdtemp(*args, **kw)

        monkeypatch.setattr(tempfile, "mkdtemp", failing_mkdtemp)


@pytest.mark.parametrize(
    ("target", "code", "reason"),
    [("save_file", errno.ENOSPC, "No space left on device"), ("mkdtemp", errno.EACCES, "Permission denied")],
)
def test_refused_checkpoint_write_exits_2_keeps_the_previous_one_and_resumes_exactly(
    monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path, straight: dict[int, float],
    target: str, code: int, reason: str,
) -> None:
    with monkeypatch.context() as mp:
        refuse_second_save(mp, target, lambda path: OSError(code, os.strerror(code), path))
        status, err = run_in_process(mp, cli_args(corpus, tmp_path))
    run_dir, root = tmp_path / "r", tmp_path / "r" / CHECKPOINTS
    # The file that failed: the new checkpoint's model file, in the temporary folder it is written in.
    where = re.escape(str(root)) + (r"/\.tmp-step_000020-\w+/model\.safetensors" if target == "save_file" else "")
    assert status == 2, err
    assert re.fullmatch(re.escape(f"error: cannot write checkpoint {root / 'step_000020'}: {reason} (") + where + re.escape(
        f"); the latest complete checkpoint is still {root / 'step_000010'}. Free some space or make {root} "
        f"writable, then continue with --resume {run_dir}\n"
    ), err), err
    assert (root / LATEST).read_text() == "step_000010\n"
    assert sorted(p.name for p in root.iterdir()) == [LATEST, "step_000010"]
    resume(monkeypatch, run_dir)
    assert train_losses(run_dir) == straight  # exact, not approx
    assert latest_checkpoint(run_dir).name == f"step_{STEPS:06d}"


def test_refused_write_of_the_run_config_on_resume_exits_2(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path) -> None:
    status, err = run_in_process(monkeypatch, [*cli_args(corpus, tmp_path), "--set", "train.max_steps=2"])
    assert status == 0, err
    config = tmp_path / "r" / "config.json"

    def refuse(path: Path, text: str) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(commands.train, "write_text_atomic", refuse)
    status, err = run_in_process(monkeypatch, ["--resume", str(tmp_path / "r"), "--set", "train.max_steps=4"])
    assert (status, err) == (2, f"error: {config}: Permission denied (check the free space and permissions there)\n")


def signal_later(sig: signal.Signals, run_dir: Path, release: Path) -> threading.Thread:
    """Once `run_dir` has a checkpoint, wait a random moment, signal this process, then release any hold."""

    def act() -> None:
        deadline = time.monotonic() + 120
        while not (run_dir / CHECKPOINTS / LATEST).is_file() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.3))
        os.kill(os.getpid(), sig)
        release.touch()

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("sig", "moment"),
    [(signal.SIGTERM, "random"), (signal.SIGINT, "random"), (signal.SIGTERM, "right after optimizer step 13")],
)
def test_sigterm_or_sigint_saves_exits_130_and_resume_continues_exactly(
    monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path, plugins: Path, straight: dict[int, float],
    sig: signal.Signals, moment: str,
) -> None:
    run_dir, release = tmp_path / "r", tmp_path / "release"
    if moment == "random":
        # Held at the last step but one until signalled, so the signal always lands in a running loop.
        thread = signal_later(sig, run_dir, release)
        faults = f'"hold_at": {STEPS - 1}, "release": "{release}"'
    else:
        # Weights updated, step not yet counted: a checkpoint taken here would be one step ahead.
        calls = iter(range(1, STEPS + 1))
        handle = register_optimizer_step_post_hook(lambda *_: next(calls) == 13 and os.kill(os.getpid(), sig))
        faults = '"poison_at": 0'
    try:
        code, err = run_in_process(monkeypatch, faults_args(corpus, tmp_path, faults))
    finally:
        thread.join() if moment == "random" else handle.remove()
    stopped_at = max(train_losses(run_dir))
    print(f"\n{sig.name} ({moment}): stopped after step {stopped_at}")
    assert (code, err) == (130, f"interrupted; continue with: python main.py --resume {run_dir}\n")
    assert latest_checkpoint(run_dir).name == f"step_{stopped_at:06d}", "saved where it stopped"
    if moment != "random":
        assert stopped_at == 13
    resume(monkeypatch, run_dir)
    assert train_losses(run_dir) == straight  # exact, not approx


def test_sigkill_at_a_random_moment_then_resume_continues_exactly(
    monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path, plugins: Path, straight: dict[int, float],
) -> None:
    run_dir = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *faults_args(corpus, tmp_path, f'"hold_at": {STEPS - 1}, "release": "none"')],
        cwd=ROOT, env=subprocess_env(GPTKIT_PLUGIN_DIRS=str(plugins)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINTS / LATEST).is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.3))
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = latest_checkpoint(run_dir).name
    resume(monkeypatch, run_dir)
    print(f"\nSIGKILL: resumed from {killed_at}")
    assert train_losses(run_dir) == straight  # exact, not approx


def test_nan_loss_stops_naming_step_and_checkpoint_and_resume_with_skip_continues_exactly(
    monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path, plugins: Path, straight: dict[int, float],
) -> None:
    code, err = run_in_process(monkeypatch, faults_args(corpus, tmp_path, '"poison_at": 15'))
    run_dir = tmp_path / "r"
    checkpoint = run_dir / CHECKPOINTS / "step_000010"
    assert code == 2
    assert err == (
        f"error: the training loss became nan at step 16; the last good checkpoint is {checkpoint}. Try a lower "
        "train.lr, a smaller train.grad_clip, run.dtype=bfloat16 instead of float16, or train.nan_policy=skip to "
        "drop such batches\n"
    )
    assert latest_checkpoint(run_dir) == checkpoint
    resume(monkeypatch, run_dir, "--set", "train.nan_policy=skip")
    assert train_losses(run_dir) == straight  # exact, not approx


if __name__ == "__main__":
    sweep(Path(sys.argv[1]))
