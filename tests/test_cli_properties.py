"""Property test: whatever a user types, `python main.py` answers without a traceback.

Hypothesis drives `main.run` in this process with generated command lines: paths and
names of any printable characters, numbers out of every range, config files of every
top-level JSON/TOML type (and some that are neither), `--set` values of every shape,
unknown commands, damaged run directories, and a reader that closes the pipe. Each
outcome must be one of:

- exit 0 (the input happened to be valid; the budgets below keep that cheap), or
- exit 2 with one `error:` paragraph on stderr, nothing on stdout, no traceback, a
  message that quotes one of the user's inputs exactly as given, and the disk as it
  was before the command (caches aside).

Every example runs in a temporary directory of its own (also the working directory),
so relative paths stay inside it and nothing is left in the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

import commands
import commands.components
import commands.export
import commands.generate
import commands.merge_lora
import commands.show_config
import commands.train
import config as run_config
import main
from gptkit import GPTModel, ModelConfig
from gptkit.interop.hf_checkpoint import export_hf
from gptkit.training.checkpoint import save_checkpoint
from gptkit.training.train_state import TrainState

ROOT = Path(__file__).resolve().parents[1]
# Kept under a minute on two busy cores: each example is one in-process command.
SETTINGS = settings(
    max_examples=int(os.environ.get("GPTKIT_CLI_EXAMPLES", "200")), deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
MODEL = {"vocab_size": 50257, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "context_length": 16}
# Training that always ends within a few tiny steps, whatever else the example sets.
TINY_TRAIN = [
    *(f"model.{k}={v}" for k, v in MODEL.items() if k != "vocab_size"),
    "train.batch_size=2", "train.eval_batches=1", "train.eval_every=1", "run.dtype=float32",
    'train.callbacks=["checkpoint"]', "train.max_steps=2", "run.device=cpu", "run.name=r", "run.out_dir=runs",
]
BUDGET_KEYS = ("train.max_steps", "train.max_tokens", "train.max_time")

# --- inputs ---------------------------------------------------------------------------------------

# What a shell can pass in an argument: printable characters (no NUL, no line breaks).
printable = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
free_text = st.text(printable, min_size=1, max_size=12)
markup_like = st.sampled_from(["[/x]", "[bold]b", "a[x]b", "[red]", "\\[x]", "[link=x]y"])
names = st.one_of(free_text, markup_like, st.sampled_from(["../../x", "..", "a/b", ".", " ", "é", "日本"]))
# A component may be in one, or not, of the files a command line names; file names have no "/".
file_names = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="/"), min_size=1, max_size=10)

huge = st.one_of(st.integers(min_value=2**40, max_value=2**70), st.integers(max_value=0, min_value=-(2**70)))
any_number = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), any_number, free_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(free_text, inner, max_size=3)),
    max_leaves=6,
)

STRING_KEYS = ["model.norm", "model.activation", "model.position", "data.tokenizer", "train.scheduler", "train.optimizer", "run.device",
               "run.name", "run.dtype", "train.nan_policy", "run.parallel", "data.path", "sampling.samplers", "train.callbacks",
               "run.out_dir"]
SIZE_KEYS = ["model.emb_dim", "model.n_heads", "model.n_layers", "model.context_length", "model.vocab_size",
             "train.batch_size", "train.grad_accum_steps", "train.eval_batches", "sampling.max_new_tokens"]
FLOAT_KEYS = ["train.lr", "train.min_lr", "data.val_fraction", "run.peak_flops", "model.drop_rate",
              "train.optimizer.weight_decay", "train.optimizer.eps", "train.grad_clip"]
INT_KEYS = ["run.seed"]


def json_text(value: object) -> str:
    return json.dumps(value, allow_nan=True)


# Values that are fine for the tiny run, so that generated command lines also reach training and its end.
VALID = {
    "model.norm": "rmsnorm", "model.activation": "relu", "model.position": "none", "train.scheduler": "constant",
    "run.device": "cpu", "run.name": "run2", "run.dtype": "bfloat16", "train.nan_policy": "skip", "model.emb_dim": "32",
    "model.n_heads": "4", "model.n_layers": "2", "model.context_length": "8", "model.vocab_size": "50304",
    "train.batch_size": "3", "train.grad_accum_steps": "2", "train.eval_batches": "2", "sampling.max_new_tokens": "3",
    "train.lr": "0.01", "train.min_lr": "0.0", "data.val_fraction": "0.2", "run.seed": "7", "model.drop_rate": "0.1",
    "train.optimizer.weight_decay": "0.0", "train.optimizer.eps": "1e-6", "train.optimizer": "sgd", "train.grad_clip": "null", "run.peak_flops": "1e12",
}
# Values the issue reported by hand, drawn often enough to be found in every run.
REPORTED = [("model.vocab_size", "1000"), ("run.device", "tpu"), ("run.name", "../../x"), ("model.vocab_size", str(2**70))]
set_values = st.one_of(
    st.sampled_from(sorted(VALID.items())),
    st.sampled_from(REPORTED),
    st.tuples(st.sampled_from(STRING_KEYS), st.one_of(names, st.sampled_from(["tpu", "cuda:x", "cpu:9", "meta", "mps", "xla"]))),
    st.tuples(st.sampled_from(SIZE_KEYS), st.one_of(huge.map(str), st.sampled_from(["1000", "3", "1"]), free_text)),
    st.tuples(st.sampled_from(FLOAT_KEYS), st.one_of(any_number.map(json_text), free_text)),
    st.tuples(st.sampled_from(INT_KEYS), st.one_of(any_number.map(json_text), free_text)),
    st.tuples(st.sampled_from(BUDGET_KEYS), st.one_of(huge.filter(lambda n: n <= 0).map(str), free_text, st.just("1.5"))),
    st.tuples(st.sampled_from(STRING_KEYS + SIZE_KEYS + FLOAT_KEYS), json_values.map(json_text)),
    st.tuples(st.lists(free_text, min_size=1, max_size=3).map(".".join), st.one_of(free_text, json_values.map(json_text))),
)


@dataclass
class Case:
    """One command line, the files it needs, and the inputs its error message may quote."""

    argv: list[str]
    quotes: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content, written first
    runs: dict[str, str] = field(default_factory=dict)  # relative path -> prepared run to copy there
    pipe_closes_after: int | None = None  # stdout raises BrokenPipeError after this many characters


def set_case(pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    argv, quotes = [], []
    for drawn_key, drawn_value in pairs:
        argv += ["--set", f"{drawn_key}={drawn_value}"]
        # What the user typed is split at its first "=", as main.py splits it: a drawn key
        # holding "=" ("1=" with "0" is `--set 1==0`) is key "1" with value "=0".
        key, _, value = f"{drawn_key}={drawn_value}".partition("=")
        parts = key.strip().split(".")
        # A config error names the dotted key (or the section above it) at the start of its line.
        quotes += [f"{'.'.join(parts[: i + 1])}:" for i in range(len(parts))] + [key.strip(), value, f"{key}={value}"]
    return argv, quotes


@st.composite
def train_cases(draw: st.DrawFn) -> Case:
    command = draw(st.sampled_from(["config", "train", ""]))
    pairs = draw(st.lists(set_values, max_size=2))
    argv, quotes = set_case(pairs)
    base = [a for item in TINY_TRAIN for a in ("--set", item)] + ["--set", "data.path=corpus.txt", "--set", "data.cache_dir=cache"]
    # Generated settings come after the tiny ones (so they count), the budget's length cap last.
    return Case(
        [*([command] if command else []), *base, *argv, "--set", "train.max_time=20"], quotes,
        files={"corpus.txt": CORPUS.encode()},
    )


CONFIG_BODIES = st.one_of(
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),  # every top-level JSON type
    st.dictionaries(st.sampled_from(["model", "train", "run", "data", "sampling", "x"]), json_values, max_size=3).map(
        lambda v: json.dumps(v, allow_nan=True).encode()
    ),
    st.sampled_from([b"{", b"[1,", b"\xff\xfe", b"model = 3", b"[model]\nnorm = 5", b"[[train]]\nx=1", b"a = [", b""]),
    free_text.map(str.encode),
)


def key_quotes(name: str, body: bytes) -> list[str]:
    """`dotted.key:` for every key of a config file's body: how a validation error names what is wrong."""
    try:
        data = tomllib.loads(body.decode()) if name.endswith(".toml") else json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    quotes: list[str] = ["(top level):"]

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                quotes.append(f"{prefix}{key}:")
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, prefix)

    walk(data, "")
    return quotes


@st.composite
def config_file_cases(draw: st.DrawFn) -> Case:
    name = draw(file_names) + draw(st.sampled_from([".json", ".toml", ".yaml", ""]))
    body = draw(CONFIG_BODIES)
    argv = ["config", "--config", name]
    files = {name: body} if name not in (".", "..") else {}
    if not draw(st.booleans()):
        return Case(argv, [name, *key_quotes(name, body)], files=files)
    second = draw(file_names) + ".json"
    files[second] = b"{}"
    return Case([*argv, "--config", second], [name, second, "--config"], files={k: v for k, v in files.items() if k not in (".", "..")})


@st.composite
def resume_cases(draw: st.DrawFn) -> Case:
    run = draw(st.sampled_from(["trained", "truncated config", "list config", "truncated checkpoint", "missing", "free"]))
    path = draw(names) if run == "free" else "r"
    argv = [draw(st.sampled_from(["train", "config", ""])), "--resume", path]
    argv = [a for a in argv if a]
    quotes = [path]
    if draw(st.booleans()):
        preset = draw(st.one_of(st.sampled_from(["gpt2", "cpu-small"]), names))
        argv += ["--preset", preset]
        quotes += [preset, "--preset"]
    pairs = draw(st.lists(st.one_of(set_values, st.just(("train.max_steps", "252"))), max_size=2))
    more, more_quotes = set_case(pairs)
    # Budget 2 is what the prepared run reached: its resume has nothing left to train.
    argv += [*more, "--set", f"train.max_steps={draw(st.sampled_from([2, 3]))}", "--set", "train.max_time=20"]
    return Case(argv, quotes + more_quotes, runs={"r": run} if run not in ("missing", "free") else {})


SAMPLER_FLAGS = ["--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "--seed", "--max-new-tokens"]


@st.composite
def generate_cases(draw: st.DrawFn) -> Case:
    # Half of them from the working run, so that the sampler values reach the sampling.
    source = draw(st.one_of(st.just("run"), st.sampled_from(["hf as run", "hf", "truncated config", "list config", "free run", "free hf"])))
    flag = "--hf-dir" if source in ("hf", "free hf") else "--run"
    path = draw(names) if source.startswith("free") else "m"
    prepared = {"run": "model", "hf as run": "hf", "hf": "hf", "truncated config": "truncated config", "list config": "list config"}
    argv = ["generate", flag, path, "--max-new-tokens", "2"]
    quotes = [path]
    for option in draw(st.lists(st.sampled_from(SAMPLER_FLAGS), max_size=2, unique=True)):
        value = draw(st.one_of(
            st.sampled_from(["0.5", "1", "2", "0.9", "40", "0", "1e-300", "1e300"]), any_number.map(str), huge.map(str), free_text,
            st.sampled_from(["nan", "inf", "-inf", "1e-300", "1e300"]),
        ))
        argv += [option, value]
        # A sampler refuses a value in its own terms: "sampler 'top_k': k: ...".
        quotes += [option, value, f"sampler '{option.removeprefix('--').replace('-', '_')}'"]
    if draw(st.booleans()):
        prompt = draw(st.one_of(free_text, st.integers(20, 60).map(lambda n: "word " * n)))
        argv += ["--prompt", prompt]
    pipe = draw(st.one_of(st.none(), st.integers(0, 5)))
    return Case(argv, quotes, runs={"m": prepared[source]} if source in prepared else {}, pipe_closes_after=pipe)


@st.composite
def command_word_cases(draw: st.DrawFn) -> Case:
    word = draw(st.one_of(free_text.filter(lambda w: not w.startswith("-")), st.sampled_from(["trian", "generat", "serv", "help"])))
    return Case([word, *draw(st.lists(st.sampled_from(["--set", "x=1", "--help2"]), max_size=2))], [word])


@st.composite
def components_cases(draw: st.DrawFn) -> Case:
    return Case(["components", draw(names)], [])


SERVE_NUMBER_FLAGS = ["--port", "--max-concurrent", "--max-queue", "--queue-timeout", "--max-tokens-cap", "--max-prompt-tokens"]


@st.composite
def serve_cases(draw: st.DrawFn) -> Case:
    # Never a real run (nothing is prepared at the path), so a command line that passes every
    # check still ends before it could listen: at loading, with the path in its message.
    path = draw(names)
    argv, quotes = ["serve", "--run", path], [path]
    for flag in draw(st.lists(st.sampled_from(SERVE_NUMBER_FLAGS), max_size=3, unique=True)):
        value = draw(st.one_of(
            st.sampled_from(["70000", "65536", "-5", "0", "-1", "8000", "1e9", "nan", "inf"]), huge.map(str), any_number.map(str), free_text,
        ))
        argv += [flag, value]
        quotes += [flag, value]
    return Case(argv, quotes)


# Folders an export may write into: any name, so long as it stays in the example's directory.
inside_names = names.filter(lambda n: not n.startswith("/") and ".." not in n.split("/"))


@st.composite
def export_cases(draw: st.DrawFn) -> Case:
    # Half of them from the working run, so that --checkpoint, --out and --dtype reach the export itself.
    source = draw(st.one_of(st.just("run"), st.sampled_from(["hf as run", "truncated config", "list config", "truncated checkpoint", "free run"])))
    prepared = {"run": "model", "hf as run": "hf", "truncated config": "truncated config", "list config": "list config",
                "truncated checkpoint": "truncated checkpoint"}
    run = draw(names) if source == "free run" else "m"
    # The run itself, folders above it and inside its checkpoints, a file, an earlier export, another run's folder.
    out = draw(st.one_of(inside_names, st.sampled_from(
        [".", "m", "m/checkpoints", "m/checkpoints/hf", "m/config.json", "m/config.json/x", "earlier", "other", "new/a/b"],
    )))
    argv, quotes = ["export", "--run", run, "--out", out], [run, out]
    runs = {"m": prepared[source]} if source in prepared else {}
    runs |= {"earlier": "hf", "other": "trained"}
    if draw(st.booleans()):
        checkpoint = draw(st.one_of(names, st.sampled_from(["step_2", "step_000002", "step_9", "m/checkpoints/step_000002", "other"])))
        argv += ["--checkpoint", checkpoint]
        quotes += [checkpoint, "--checkpoint"]
    if draw(st.booleans()):
        argv.append("--overwrite")
    if draw(st.booleans()):
        dtype = draw(st.one_of(st.sampled_from(["bfloat16", "float16", "float32"]), names))
        argv += ["--dtype", dtype]
        quotes += [dtype, "--dtype"]
    return Case(argv, quotes, runs=runs)


@st.composite
def classify_cases(draw: st.DrawFn) -> Case:
    # No classification run among the prepared ones: every working source is refused as "not a classifier".
    source = draw(st.sampled_from(["run", "hf as run", "truncated config", "list config", "truncated checkpoint", "free run"]))
    prepared = {"run": "model", "hf as run": "hf", "truncated config": "truncated config", "list config": "list config",
                "truncated checkpoint": "truncated checkpoint"}
    run = draw(names) if source == "free run" else "m"
    argv, quotes = ["classify", "--run", run], [run]
    for text in draw(st.lists(free_text, min_size=1, max_size=2)):
        argv += ["--text", text]
    if draw(st.booleans()):
        argv.append("--all")
    return Case(argv, quotes, runs={"m": prepared[source]} if source in prepared else {})


@st.composite
def merge_lora_cases(draw: st.DrawFn) -> Case:
    # No LoRA run among the prepared ones: every working source is refused as "not a LoRA run".
    source = draw(st.sampled_from(["run", "hf as run", "truncated config", "list config", "truncated checkpoint", "free run"]))
    prepared = {"run": "model", "hf as run": "hf", "truncated config": "truncated config", "list config": "list config",
                "truncated checkpoint": "truncated checkpoint"}
    run = draw(names) if source == "free run" else "m"
    out = draw(st.one_of(names, st.sampled_from([".", "m", "m/checkpoints", "other", "new/a/b"])))
    runs = {"m": prepared[source]} if source in prepared else {}
    return Case(["merge-lora", "--run", run, "--out", out], [run, out], runs=runs | {"other": "trained"})


cases = st.one_of(
    train_cases(), config_file_cases(), resume_cases(), generate_cases(), command_word_cases(), components_cases(), serve_cases(),
    export_cases(), classify_cases(), merge_lora_cases(),
)

# --- prepared material ------------------------------------------------------------------------------

CORPUS = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60))


def tiny_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(ModelConfig(**MODEL))


def write_model_run(run_dir: Path, model: GPTModel) -> None:
    overrides = [f"model.{k}={v}" for k, v in MODEL.items()] + ['sampling.samplers=["greedy"]']
    cfg = run_config.load_run_config(overrides=overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    save_checkpoint(run_dir, model, torch.optim.AdamW(model.parameters()), TrainState(step=2))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run directories and folders the generated command lines point at, made once."""
    root = tmp_path_factory.mktemp("prepared")
    model = tiny_model()
    out: dict[str, Path] = {}
    write_model_run(root / "model", model)
    out["model"] = root / "model"
    out["hf"] = export_hf(model, root / "hf")
    (root / "corpus.txt").write_text(CORPUS)
    with working_directory(root), captured() as (_, err):
        code = main.run(["--set", "data.path=corpus.txt", *(a for item in TINY_TRAIN for a in ("--set", item))])
    assert code == 0, err.getvalue()
    out["trained"] = root / "runs" / "r"
    for name, damage in [("truncated config", "cut"), ("list config", "list"), ("truncated checkpoint", "checkpoint")]:
        target = root / name.replace(" ", "_")
        shutil.copytree(out["trained"], target)
        config_path = target / "config.json"
        if damage == "cut":
            config_path.write_bytes(config_path.read_bytes()[:100])
        elif damage == "list":
            config_path.write_text("[1, 2]")
        else:
            weights = next((target / "checkpoints").glob("step_*")) / "model.safetensors"
            os.truncate(weights, weights.stat().st_size // 2)
        out[name] = target
    return out


# --- running one command line -------------------------------------------------------------------------


class ClosingPipe(io.StringIO):
    """A stdout whose reader goes away after `limit` characters, as `| head -c N` does."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, text: str) -> int:
        if self.tell() + len(text) > self.limit:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)

    def flush(self) -> None:
        if self.tell() >= self.limit:
            raise BrokenPipeError(32, "Broken pipe")


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def captured(pipe_limit: int | None = None) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """stdout and stderr as strings; every console the commands print through writes into them, one wide line per message."""
    out: io.StringIO = ClosingPipe(pipe_limit) if pipe_limit is not None else io.StringIO()
    err = io.StringIO()
    wide_out = Console(file=out, width=10_000, no_color=True, soft_wrap=True)
    wide_err = Console(file=err, width=10_000, no_color=True, soft_wrap=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        mp.setattr(sys, "stdin", io.StringIO(""))
        for module in (main, commands, commands.train, commands.generate, commands.show_config, commands.components, commands.export, commands.merge_lora):
            if hasattr(module, "console"):
                mp.setattr(module, "console", wide_out)
            if hasattr(module, "err_console"):
                mp.setattr(module, "err_console", wide_err)
        yield out, err


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under `root`, caches aside."""
    state: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.split("/")[0] == "cache":
            continue
        state[relative] = None if path.is_dir() else path.read_bytes()
    return state


def problem_with(case: Case, prepared: dict[str, Path]) -> str | None:
    """What is wrong with the outcome of `case` (None: exit 0, or a proper exit 2); a short signature first."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, body in case.files.items():
            (root / name).write_bytes(body)
        for name, source in case.runs.items():
            shutil.copytree(prepared[source], root / name)
        before = snapshot(root)
        with working_directory(root), captured(case.pipe_closes_after) as (out, err):
            try:
                code = main.run(list(case.argv))
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 2
            except BaseException as error:  # noqa: BLE001 - any escape is the finding
                frames = [f for f in traceback.extract_tb(error.__traceback__) if str(ROOT) in f.filename and "/tests/" not in f.filename]
                where = f"{Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno}" if frames else "?"
                return f"{type(error).__name__} at {where}: {str(error)[:200]}"
        stdout = out.getvalue()
        stderr = err.getvalue()
        after = snapshot(root)
    if code == 0:
        return None
    if code != 2:
        return f"exit {code}: {stderr[-300:]}"
    lines = stderr.rstrip("\n").split("\n")
    if not stderr.startswith("error: ") or sum(line.startswith("error:") for line in lines) != 1 or "" in lines:
        return f"not one error: paragraph: {stderr[:80]!r} ... {stderr[-200:]!r}"
    if "Traceback" in stderr:
        return f"traceback: {stderr[-300:]}"
    if stdout and case.argv[0] == "generate":  # its stdout is the text; training reports progress there
        return f"stdout on a failure: {stdout[:100]!r}"
    if case.quotes and not any(q in stderr for q in case.quotes):
        return f"input not quoted as given: {case.quotes[:4]} in {stderr[:300]!r}"
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k, b"?") != after.get(k, b"?"))
        return f"failure changed the disk: {changed[:5]}"
    return None


@SETTINGS
@given(cases)
def test_any_command_line_exits_0_or_2_with_one_error_paragraph_quoting_the_input(prepared: dict[str, Path], case: Case) -> None:
    problem = problem_with(case, prepared)
    assert problem is None, f"{case.argv}: {problem}"
