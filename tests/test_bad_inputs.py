"""Bad input the other test files leave out, each answered in one paragraph with exit code 2.

Every case runs `main.run` in this process (what `python main.py` runs) and
compares the whole error output with the message written out here; the API
cases compare the exception's message. docs/errors.md lists them all.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env
from rich.console import Console

import commands.generate
import commands.train
import main
from gptkit import ModelConfig, reset_default_registry
from gptkit.errors import CheckpointError
from gptkit.interop.hf_checkpoint import export_hf
from gptkit.model.gpt import GPTModel
from gptkit.plugins import PLUGIN_DIRS_ENV
from gptkit.serving.openai_schema import ApiError, parse_request
from gptkit.training.checkpoint import load_checkpoint, save_checkpoint
from gptkit.training.train_state import TrainState

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set", "model.emb_dim=32", "--set", "model.n_heads=2", "--set", "model.n_layers=1",
    "--set", "model.context_length=16", "--set", "train.batch_size=2", "--set", "train.eval_batches=1",
    "--set", "run.dtype=float32", "--set", 'train.callbacks=["checkpoint"]',
]


def run_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    """(exit code, error output), each message on one wide line."""
    buffer = io.StringIO()
    monkeypatch.setattr(main, "err_console", Console(file=buffer, width=1000, no_color=True))
    return main.run(list(argv)), buffer.getvalue()


def config_error(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> str:
    """The error `python main.py config --set ...` prints, after checking it exits 2."""
    code, err = run_main(monkeypatch, "config", *(a for o in overrides for a in ("--set", o)))
    assert code == 2, err
    return err


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("trian.lr=1", "trian: unknown key (no such setting)"),  # a section
        ("train.lrr=0.1", "train.lrr: unknown key (no such setting)"),  # a key of a section
        ('train.scheduler={"name": "cosine", "warmup": 5}', "train.scheduler.warmup: unknown key (no such setting)"),
        ('train.callbacks=[{"name": "checkpoint", "evry": 2}]', "train.callbacks.evry: unknown key (no such setting)"),
        ('sampling.samplers=[{"name": "top_k", "kk": 5}]', "sampling.samplers.kk: unknown key (no such setting)"),
        ('data.tokenizer={"name": "gpt2", "vocab": 3}', "data.tokenizer.vocab: unknown key (no such setting)"),
    ],
)
def test_config_typos_at_every_depth_name_the_dotted_key(monkeypatch: pytest.MonkeyPatch, override: str, line: str) -> None:
    assert config_error(monkeypatch, override) == f"error: invalid config:\n{line}\n"


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("train.batch_size=two", "train.batch_size: Input should be a valid integer, unable to parse string as an integer"),
        ('train.callbacks="checkpoint"', "train.callbacks: Input should be a valid list"),
        ("run.compile=maybe", "run.compile: Input should be a valid boolean, unable to interpret input"),
        ("train.nan_policy=ignore", "train.nan_policy: Input should be 'stop' or 'skip'"),
        ("train.lr=0", "train.lr: Input should be greater than 0"),
        ("data.val_fraction=0.7", "data.val_fraction: Input should be less than 0.5"),
    ],
)
def test_wrong_types_and_out_of_range_values_in_run_sections(monkeypatch: pytest.MonkeyPatch, override: str, line: str) -> None:
    assert config_error(monkeypatch, override) == f"error: invalid config:\n{line}\n"


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["train.min_lr=0.1"], "train: train.min_lr (0.1) is above train.lr (0.002)"),
        (["run.dtype=float16"], "(top level): run.dtype float16 needs a CUDA device (set run.device=cuda); on CPU use bfloat16 or float32"),
        (["train.max_steps=null"], "train: set at least one budget: train.max_steps, train.max_tokens, train.max_time or train.max_epochs"),
        (["run.parallel=fsdp", "run.dtype=float16", "run.device=cuda"], "run: run.parallel fsdp does not support run.dtype float16; use bfloat16"),
    ],
)
def test_contradictory_settings(monkeypatch: pytest.MonkeyPatch, overrides: list[str], line: str) -> None:
    assert config_error(monkeypatch, *overrides) == f"error: invalid config:\n{line}\n"


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("train.scheduler=cosin", "train.scheduler: unknown scheduler 'cosin' (did you mean 'cosine'?); valid scheduler names: constant, cosine, linear, wsd"),
        ('sampling.samplers=["top_q"]', "sampling.samplers: unknown sampler 'top_q' (did you mean 'top_p'?); valid sampler names: greedy, min_p, repetition_penalty, temperature, top_k, top_p"),
        ('train.callbacks=["checkpont"]', "train.callbacks: unknown callback 'checkpont' (did you mean 'checkpoint'?); valid callback names: checkpoint, console, csv, early_stopping, evaluate, loss_plot, metrics, samples, tensorboard, wandb"),
        ("data.tokenizer=gpt3", "data.tokenizer: unknown tokenizer 'gpt3' (did you mean 'gpt2'?); valid tokenizer names: bpe, char, gpt2"),
    ],
)
def test_unknown_scheduler_sampler_callback_and_tokenizer_names(monkeypatch: pytest.MonkeyPatch, override: str, line: str) -> None:
    assert config_error(monkeypatch, override) == f"error: invalid config:\n{line}\n"


# --- training: data, output folder, schedule ------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(400)))
    return path


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, "--set", f"data.path={corpus}", "--set", f"data.cache_dir={corpus.parent / 'cache'}",
            "--set", f"run.out_dir={out}", "--set", "run.name=r", *extra]


def test_decaying_schedule_without_a_step_budget(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path) -> None:
    code, err = run_main(monkeypatch, *train_args(corpus, tmp_path, "--set", "train.max_steps=null", "--set", "train.max_tokens=1000"))
    assert code == 2
    assert err == (
        "error: train.scheduler 'cosine' decays over train.max_steps, which is not set; "
        "set train.max_steps or use train.scheduler=constant\n"
    )


def test_full_output_directory_at_start(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path) -> None:
    write_text = Path.write_text

    def disk_full(path: Path, *args: object, **kw: object) -> int:
        if path.name == ".write-test":  # the probe train writes before anything else
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_text(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", disk_full)
    code, err = run_main(monkeypatch, *train_args(corpus, tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "r"
    assert code == 2
    assert err == f"error: cannot write the run directory {run_dir}: No space left on device; set run.out_dir to a writable folder\n"


# --- checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        code, err = run_main(mp, *train_args(corpus, out, "--set", "train.max_steps=2"))
    assert code == 0, err
    return out / "r"


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif how == "cut JSON":
        path.write_text('{"format_version": 1, "state": {"step": ')
    elif how == "future format":
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "format_version": 2}))
    else:
        path.unlink()


@pytest.mark.parametrize(
    ("file", "how", "message"),
    [
        ("model.safetensors", "truncated", "checkpoint file {path} is truncated or corrupted (Error while deserializing header: incomplete metadata, file not fully covered)"),
        ("optimizer.safetensors", "garbage", "checkpoint file {path} is truncated or corrupted (Error while deserializing header: invalid JSON in header: EOF while parsing a value at line 1 column 0)"),
        ("optimizer.safetensors", "missing", "checkpoint file {path} is missing"),
        ("trainer.json", "cut JSON", "{path} is corrupted (JSONDecodeError: Expecting value: line 1 column 41 (char 40))"),
        ("trainer.json", "future format", "{path} is checkpoint format 2; this gptkit reads format 1 (was it written by another version of gptkit?)"),
    ],
)
def test_resume_from_a_damaged_checkpoint(
    monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path, file: str, how: str, message: str
) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    path = run_dir / "checkpoints" / "step_000002" / file
    damage(path, how)
    code, err = run_main(monkeypatch, "--resume", str(run_dir), "--set", "train.max_steps=3")
    assert (code, err) == (2, f"error: {message.format(path=path)}\n")


def test_resume_of_a_run_without_checkpoints(monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    code, err = run_main(monkeypatch, "--resume", str(run_dir))
    assert (code, err) == (2, f"error: {run_dir} holds no checkpoint (expected {run_dir / 'checkpoints'}/step_*/)\n")


def test_generate_from_a_truncated_checkpoint(monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    path = run_dir / "checkpoints" / "step_000002" / "model.safetensors"
    damage(path, "truncated")
    code, err = run_main(monkeypatch, "generate", "--run", str(run_dir), "--prompt", "x")
    assert code == 2
    assert err == (
        f"error: checkpoint file {path} is truncated or corrupted "
        "(Error while deserializing header: incomplete metadata, file not fully covered)\n"
    )


def test_optimizer_state_that_does_not_fit_is_a_checkpoint_error(tmp_path: Path) -> None:
    model = GPTModel(ModelConfig(vocab_size=64, emb_dim=16, n_layers=1, n_heads=2, context_length=8))
    one_group = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, model, one_group, TrainState(step=1))
    params = list(model.parameters())
    two_groups = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model, two_groups)
    assert str(err.value) == (
        f"{path / 'optimizer.safetensors'} does not fit this model's optimizer "
        "(ValueError: loaded state dict has a different number of parameter groups)"
    )


# --- plugins -------------------------------------------------------------------------------------

PLUGINS = {
    "import error": ("import gptkit_no_such_module_xyz\n", "plugin file {path} failed to import: ModuleNotFoundError: No module named 'gptkit_no_such_module_xyz'"),
    "taken name": (
        (
            "import torch\nfrom gptkit import hookimpl\n\n@hookimpl\ndef gptkit_register_components(registry):\n"
            "    registry.register('norm', 'layernorm', lambda dim: torch.nn.LayerNorm(dim))\n"
        ),
        "plugins/{name} registers norm 'layernorm', but that name is already taken by built-in; pass override=True to replace it on purpose",
    ),
}


@pytest.mark.parametrize("case", sorted(PLUGINS))
def test_plugin_folder_with_a_broken_or_clashing_plugin_fails_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str
) -> None:
    code, message = PLUGINS[case]
    path = tmp_path / "plugins" / f"{case.replace(' ', '_')}.py"
    path.parent.mkdir()
    path.write_text(code)
    monkeypatch.setenv(PLUGIN_DIRS_ENV, str(path.parent))
    reset_default_registry()
    try:
        status, err = run_main(monkeypatch, "components")
    finally:
        monkeypatch.delenv(PLUGIN_DIRS_ENV)
        reset_default_registry()
    assert (status, err) == (2, f"error: {message.format(path=path, name=path.name)}\n")


# --- generation parameters ------------------------------------------------------------------------


def test_top_p_of_zero_on_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, err = run_main(monkeypatch, "generate", "--run", str(tmp_path), "--top-p", "0")
    assert (code, err) == (2, "error: sampler 'top_p': p: Input should be greater than 0\n")


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b'{"prompt": "x", "top_p": 0}', "top_p: Input should be greater than 0", "top_p"),
        (b'{"prompt": "x", "temperature": -1}', "temperature: Input should be greater than or equal to 0", "temperature"),
        (b'{"prompt": "x", "max_tokens": -1}', "max_tokens: Input should be greater than or equal to 0", "max_tokens"),
        (b"\xff\xfe", "the request body is not valid JSON: Expecting value: line 1 column 1 (char 0)", None),
    ],
)
def test_generation_parameters_out_of_range_in_a_server_request(body: bytes, message: str, param: str | None) -> None:
    with pytest.raises(ApiError) as err:
        parse_request(body)
    assert err.value.status == 400
    assert err.value.body() == {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


# --- the command line itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trian"], "unknown command 'trian' (did you mean 'train'?); the commands are train, config, components, generate, chat, serve, export, classify, evaluate, merge-lora (with no command, or only options, python main.py trains; python main.py --help describes them)"),
        (["generat", "--run", "r"], "unknown command 'generat' (did you mean 'generate'?); the commands are train, config, components, generate, chat, serve, export, classify, evaluate, merge-lora (with no command, or only options, python main.py trains; python main.py --help describes them)"),
        (["config", "--config", "a.json", "--config", "b.json"], "argument --config: given twice ('a.json' and 'b.json'); give it once; see python main.py config --help"),
        (["generate", "--run", "r", "--top-k", "1e3"], "argument --top-k: expected a whole number, got '1e3'; see python main.py generate --help"),
        (["generate", "--run", "r", "--temperature", "nan"], "argument --temperature: expected a finite number, got 'nan'; see python main.py generate --help"),
        (["generate", "--run", "r", "--seed", str(2**64)], f"--seed must be between {-(2**63)} and {2**64 - 1}, got {2**64}"),
        (["generate", "--run", "r", "--max-new-tokens", "3149228960490"], "--max-new-tokens must be at most 1,000,000, got 3149228960490"),
        (["generate", "--run", "r", "--temperature", "1e-300"], "--temperature 1e-300 is too small to divide the logits by; use at least 1e-30 (0 means greedy decoding)"),
        (["generate", "--run", "r", "--repetition-penalty", "1e-300"], "--repetition-penalty 1e-300 is too small to divide the logits by; use at least 1e-30"),
        (["config", "--set", "run.device=tpu"], "invalid config:\nrun.device: 'tpu' is not a device gptkit trains on; use auto, cpu, cuda, cuda:N or mps"),
        (["config", "--set", "run.name=../../x"], "invalid config:\nrun.name: '../../x' must be one folder name (no '/', '\\', '.' or '..'), the run's folder inside run.out_dir"),
        (["config", "--set", "model.norm=[/x]y"], "invalid config:\nmodel.norm: unknown norm '[/x]y'; valid norm names: layernorm, rmsnorm"),
        (["generate", "--run", "[link=x]y"], "run directory [link=x]y does not exist"),
    ],
)
def test_command_line_mistakes_are_one_line_quoting_the_input(monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str) -> None:
    assert run_main(monkeypatch, *argv) == (2, f"error: {message}\n")


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("list.json", b"[1, 2]", "config file {path} holds an array; expected an object of sections (model, data, train, sampling, run)"),
        ("number.json", b"3.5", "config file {path} holds a number; expected an object of sections (model, data, train, sampling, run)"),
        ("null.json", b"null", "config file {path} holds null; expected an object of sections (model, data, train, sampling, run)"),
        ("latin1.toml", b"[model]\nnorm = 'caf\xe9'\n", "config file {path} is not UTF-8 text: byte 0xe9 at byte offset 19"),
        ("folder.json", None, "config file {path} is a directory; expected a .toml or .json file"),
    ],
)
def test_config_files_that_hold_no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, body: bytes | None, message: str) -> None:
    path = tmp_path / name
    path.mkdir() if body is None else path.write_bytes(body)
    assert run_main(monkeypatch, "config", "--config", str(path)) == (2, f"error: {message.format(path=path)}\n")


def test_preset_with_resume_is_refused(monkeypatch: pytest.MonkeyPatch, trained: Path) -> None:
    config = (trained / "config.json").read_bytes()
    code, err = run_main(monkeypatch, "--resume", str(trained), "--preset", "gpt2")
    assert (code, err) == (2, "error: --preset gpt2 has no effect with --resume: a resumed run keeps the model it was made with\n")
    assert (trained / "config.json").read_bytes() == config


# --- training: nothing left behind, nothing rewritten ---------------------------------------------


def test_model_vocabulary_smaller_than_the_tokenizer_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path
) -> None:
    code, err = run_main(monkeypatch, *train_args(corpus, tmp_path / "runs", "--set", "model.vocab_size=1000"))
    assert (code, err) == (2, "error: model.vocab_size is 1000, but tokenizer 'gpt2' has 50257 token ids; set model.vocab_size to at least 50257\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("failure", ["missing data", "trainer setup"])
def test_a_failed_start_leaves_no_run_directory(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path, failure: str) -> None:
    out = tmp_path / "runs"
    if failure == "missing data":
        code, err = run_main(monkeypatch, *train_args(tmp_path / "absent.txt", out))
        assert (code, err) == (2, f"error: data source '{tmp_path / 'absent.txt'}' does not exist; expected a text file, directory, glob or http(s) URL\n")
    else:  # past the data, refused while the trainer is built
        code, err = run_main(monkeypatch, *train_args(corpus, out, "--set", "train.max_steps=null", "--set", "train.max_tokens=64"))
        assert code == 2 and err.startswith("error: train.scheduler 'cosine' decays over train.max_steps"), err
    assert list(tmp_path.iterdir()) == []  # not even run.out_dir
    # The same run.name then starts as if nothing had happened.
    code, err = run_main(monkeypatch, *train_args(corpus, out, "--set", "train.max_steps=1"))
    assert code == 0, err
    assert (out / "r" / "config.json").is_file()


def test_refused_resume_does_not_rewrite_the_run_config(monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    damage(run_dir / "checkpoints" / "step_000002" / "model.safetensors", "truncated")
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, err = run_main(monkeypatch, "--resume", str(run_dir), "--set", "train.max_steps=252")
    assert code == 2 and "is truncated or corrupted" in err, err
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resume_from_a_truncated_run_config(monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    config = run_dir / "config.json"
    config.write_bytes(config.read_bytes()[:100])
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as err:
        reason = str(err)
    code, err = run_main(monkeypatch, "--resume", str(run_dir))
    assert (code, err) == (2, f"error: cannot resume {run_dir}: {config} is not valid JSON ({reason}); was it cut short?\n")
    code, err = run_main(monkeypatch, "generate", "--run", str(run_dir), "--prompt", "x")
    assert (code, err) == (2, f"error: {config} is not valid JSON ({reason}); was it cut short?\n")


def test_resume_of_a_run_that_reached_its_budget(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path) -> None:
    args = train_args(corpus, tmp_path, "--set", "train.max_steps=2", "--set", 'train.callbacks=["checkpoint", "metrics"]')
    code, err = run_main(monkeypatch, *args)
    assert code == 0, err
    run_dir = tmp_path / "r"
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    out = io.StringIO()
    monkeypatch.setattr(commands.train, "console", Console(file=out, width=1000, no_color=True))
    code, err = run_main(monkeypatch, "--resume", str(run_dir), "--set", "train.max_steps=2")
    assert (code, err) == (0, "")
    assert out.getvalue() == (
        f"resuming {run_dir} from step_000002\n{run_dir} has already reached train.max_steps=2 (step 2); nothing to train. "
        f"To go on, raise the budget: python main.py --resume {run_dir} --set train.max_steps=N\n"
    )
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    records = [json.loads(line)["type"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records.count("end") == 1


# --- generation ------------------------------------------------------------------------------------


class ClosedPipe(io.StringIO):
    """A stdout whose reader left after 3 characters, as `| head -c 3` does."""

    def write(self, text: str) -> int:
        if self.tell() + len(text) > 3:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_generate_into_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch, trained: Path) -> None:
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code, err = run_main(monkeypatch, "generate", "--run", str(trained), "--prompt", "x", "--max-new-tokens", "20")
    assert code == 0 and "error" not in err and "Traceback" not in err, err
    # And as a shell runs it: no "Exception ignored" from the interpreter's last flush either.
    shell = f"{shlex.quote(sys.executable)} main.py generate --run {shlex.quote(str(trained))} --prompt x | head -c 5; echo \" ${{PIPESTATUS[0]}}\""
    result = subprocess.run(["bash", "-c", shell], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert result.stdout.endswith(" 0\n") and "Error" not in result.stderr and "Exception" not in result.stderr, result.stderr


def test_a_prompt_longer_than_the_context_is_warned_about(monkeypatch: pytest.MonkeyPatch, trained: Path) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    notes = io.StringIO()
    monkeypatch.setattr(commands.generate, "err_console", Console(file=notes, width=1000, no_color=True))
    code, err = run_main(monkeypatch, "generate", "--run", str(trained), "--prompt", "word" + " word" * 19, "--max-new-tokens", "1")
    assert code == 0, err
    err = notes.getvalue()
    assert "warning: the prompt is 20 tokens, longer than the model's context of 16; the model sees only its last 16 tokens\n" in err


def test_generate_from_a_hugging_face_folder_given_as_a_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = GPTModel(ModelConfig(emb_dim=16, n_heads=2, n_layers=1, context_length=16))
    folder = export_hf(model, tmp_path / "hf")
    code, err = run_main(monkeypatch, "generate", "--run", str(folder))
    assert (code, err) == (2, f"error: {folder} is a Hugging Face checkpoint folder, not a gptkit run directory; use --hf-dir {folder}\n")


# --- a component whose plugin is gone ---------------------------------------------------------------

NORM_PLUGIN = """
from gptkit import hookimpl
from gptkit.layers.layer_norm import LayerNorm, LayerNormParams

@hookimpl
def gptkit_register_components(registry):
    registry.register("norm", "extranorm", LayerNorm, params=LayerNormParams, description="a LayerNorm by another name")
"""


def test_a_component_whose_plugin_was_uninstalled_names_who_registered_it(
    monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path
) -> None:
    plugin = tmp_path / "extras" / "extranorm.py"
    plugin.parent.mkdir()
    plugin.write_text(NORM_PLUGIN)
    monkeypatch.setenv(PLUGIN_DIRS_ENV, str(plugin.parent))
    reset_default_registry()
    try:
        code, err = run_main(monkeypatch, *train_args(corpus, tmp_path / "runs", "--set", "model.norm=extranorm", "--set", "train.max_steps=1"))
        assert code == 0, err
    finally:
        monkeypatch.delenv(PLUGIN_DIRS_ENV)
        reset_default_registry()
    run_dir = tmp_path / "runs" / "r"
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["components"]["norm/extranorm"] == "extras/extranorm.py"
    assert stored["components"]["norm/layernorm"] == "built-in" if "norm/layernorm" in stored["components"] else True
    note = "norm 'extranorm' was registered by extras/extranorm.py when this run was made (is that plugin still installed?)"
    unknown = "model.norm: unknown norm 'extranorm' (did you mean 'rmsnorm'?); valid norm names: layernorm, rmsnorm"
    code, err = run_main(monkeypatch, "generate", "--run", str(run_dir))
    assert (code, err) == (2, f"error: {run_dir / 'config.json'} does not describe a model: {unknown}\n{note}\n")
    code, err = run_main(monkeypatch, "--resume", str(run_dir), "--set", "train.max_steps=2")
    assert (code, err) == (2, f"error: invalid config:\n{unknown}\n{note}\n")


def test_resume_of_a_run_made_before_the_components_map(monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored.pop("components")["norm/layernorm"] == "built-in"
    (run_dir / "config.json").write_text(json.dumps(stored))
    code, err = run_main(monkeypatch, "--resume", str(run_dir), "--set", "train.max_steps=3")
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["components"]["norm/layernorm"] == "built-in"


def test_a_model_too_large_to_build(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path) -> None:
    code, err = run_main(monkeypatch, *train_args(corpus, tmp_path / "runs", "--set", f"model.vocab_size={2**70}"))
    assert code == 2
    assert err.startswith(
        f"error: cannot build a model of model.vocab_size={2**70}, model.emb_dim=32, model.n_layers=1, model.context_length=16 on cpu: "
        "empty(): argument 'size' failed to unpack the object at pos 1 with error \"Overflow when unpacking long long"
    ), err
    assert err.count("\n") == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--port", "70000"], "--port must be 0 (any free port) to 65535, got 70000"),
        (["--port", "-5"], "--port must be 0 (any free port) to 65535, got -5"),
        (["--max-concurrent", "0"], "--max-concurrent must be at least 1, got 0"),
        (["--max-queue", "-1"], "--max-queue must be at least 0, got -1"),
        (["--max-tokens-cap", "0"], "--max-tokens-cap must be at least 1, got 0"),
        (["--max-prompt-tokens", "0"], "--max-prompt-tokens must be at least 1, got 0"),
        (["--queue-timeout", "0"], "--queue-timeout must be a positive number of seconds, got 0.0"),
    ],
)
def test_serve_limits_name_their_flag_before_the_model_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str], line: str) -> None:
    # The run folder does not exist: a limit check that came after loading would say so instead.
    code, err = run_main(monkeypatch, "serve", "--run", str(tmp_path / "absent"), *flags)
    assert (code, err) == (2, f"error: {line}\n")


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_ctrl_c_while_the_model_loads_ends_without_a_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str) -> None:
    import gptkit.generation.loading as loading

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "load_model", interrupted)
    code, err = run_main(monkeypatch, command, "--run", str(tmp_path))
    assert (code, err) == (130, "interrupted\n")
