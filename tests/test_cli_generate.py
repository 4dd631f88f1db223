"""`python main.py generate` and `chat` against a tiny run directory and a Hugging Face export."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import randomize_weights
from rich.console import Console

import config as run_config
import main
from gptkit import GPTModel, ModelConfig
from gptkit.data.tokenizer import Tokenizer
from gptkit.interop.hf_checkpoint import export_hf
from gptkit.training.checkpoint import save_checkpoint
from gptkit.training.train_state import TrainState

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"vocab_size": 50257, "emb_dim": 32, "n_heads": 2, "n_layers": 1, "context_length": 32, "weight_tying": False}
MAX_NEW = 12  # the run's own sampling.max_new_tokens


def random_model(seed: int) -> GPTModel:
    """Weights wide enough (N(0, 0.5)) that greedy text varies from token to token."""
    model = GPTModel(ModelConfig(**MODEL))
    return randomize_weights(model, seed)  # type: ignore[return-value]


def write_run(run_dir: Path, model: GPTModel, model_section: dict[str, object], overrides: Sequence[str] = ()) -> Path:
    """A run directory as training leaves it: config.json and one checkpoint; `overrides` are more --set values."""
    overrides = [f"model.{k}={json.dumps(v)}" for k, v in model_section.items()] + list(overrides)
    overrides += ['sampling.samplers=["greedy"]', f"sampling.max_new_tokens={MAX_NEW}"]
    cfg = run_config.load_run_config(overrides=overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    save_checkpoint(run_dir, model, torch.optim.AdamW(model.parameters()), TrainState(step=2))
    return run_dir


@pytest.fixture(scope="module")
def model() -> GPTModel:
    return random_model(0)


@pytest.fixture(scope="module")
def run_dir(model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "r", model, MODEL)


@pytest.fixture(scope="module")
def hf_dir(model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hf(model, tmp_path_factory.mktemp("hf") / "tiny")


def greedy_text(model: GPTModel, prompt: str, n: int) -> str:
    """Greedy continuation, recomputing the whole context per token, decoded up to <|endoftext|>."""
    tok = Tokenizer()
    tokens = tok.encode(prompt) if prompt else [tok.eot_id]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([tokens[-model.cfg.context_length :]]))[0, -1].argmax())
            if nxt == tok.eot_id:
                break
            new.append(nxt)
            tokens.append(nxt)
    return tok.decode_bytes(new).decode("utf-8", errors="replace")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "COLUMNS": "300", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env, input=stdin,
        capture_output=True, text=True, encoding="utf-8", timeout=120, check=False,
    )


# --- generate ---------------------------------------------------------------------------------


def test_generate_from_a_run_uses_its_sampling_settings(run_dir: Path, model: GPTModel) -> None:
    result = cli("generate", "--run", str(run_dir), "--prompt", "The meaning of life is")
    assert result.returncode == 0, result.stderr
    # No sampler options: the run's chain (greedy) and its max_new_tokens (12).
    assert result.stdout == "The meaning of life is" + greedy_text(model, "The meaning of life is", MAX_NEW) + "\n"
    assert "step_000002" in result.stderr


def test_generate_from_a_hugging_face_export_with_options_and_a_stop_string(hf_dir: Path, model: GPTModel) -> None:
    full = greedy_text(model, "Hello", 20)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    result = cli("generate", "--hf-dir", str(hf_dir), "--prompt", "Hello", "--temperature", "0",
                 "--max-new-tokens", "20", "--stop", stop, "--stop", "never appears")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello" + expected + "\n"


class Recorder:
    """A stdout that remembers every write and flush, in order."""

    def __init__(self) -> None:
        self.events: list[str | None] = []  # None marks a flush

    def write(self, text: str) -> int:
        self.events.append(text)
        return len(text)

    def flush(self) -> None:
        self.events.append(None)

    def isatty(self) -> bool:
        return False

    @property
    def text(self) -> str:
        return "".join(e for e in self.events if e is not None)


def run_main(monkeypatch: pytest.MonkeyPatch, argv: Sequence[str], stdin: str = "") -> tuple[int, str, str]:
    """main.run in this process: (exit code, stdout, stderr), with errors on one wide line."""
    out, err = Recorder(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setattr(main, "err_console", Console(file=err, width=1000, no_color=True))
    code = main.run(list(argv))
    return code, out.text, err.getvalue()


def test_generate_streams_text_as_it_is_produced(monkeypatch: pytest.MonkeyPatch, run_dir: Path, model: GPTModel) -> None:
    code, text, _ = run_main(monkeypatch, ["generate", "--run", str(run_dir), "--prompt", "Once", "--max-new-tokens", "10"])
    assert code == 0 and text == "Once" + greedy_text(model, "Once", 10) + "\n"
    events = sys.stdout.events  # type: ignore[attr-defined]
    pieces = [e for e, after in itertools.pairwise(events) if e and after is None]
    assert len(pieces) >= 5  # flushed piece by piece, not once at the end


def test_seeded_sampling_from_the_command_line_is_reproducible(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    args = ["generate", "--run", str(run_dir), "--prompt", "A", "--temperature", "1.2", "--top-p", "0.95",
            "--min-p", "0.01", "--repetition-penalty", "1.3", "--max-new-tokens", "16"]
    first = run_main(monkeypatch, [*args, "--seed", "1"])
    again = run_main(monkeypatch, [*args, "--seed", "1"])
    other = run_main(monkeypatch, [*args, "--seed", "2"])
    assert first[0] == 0 and first[1] == again[1] != other[1]


# --- chat -------------------------------------------------------------------------------------


def test_chat_reads_piped_lines_until_exit(run_dir: Path, model: GPTModel) -> None:
    result = cli("chat", "--run", str(run_dir), "--temperature", "0", "--max-new-tokens", "8",
                 stdin="hello there\n\nhow are you\n/exit\nnever read\n")
    assert result.returncode == 0, result.stderr
    first = greedy_text(model, "User: hello there\nAssistant:", 8).split("\nUser:")[0]
    assert result.stdout.startswith(f"User: hello there\nAssistant:{first}\nUser: how are you\nAssistant:")
    assert result.stdout.count("Assistant:") == 2 and "never read" not in result.stdout


def test_chat_ends_at_end_of_input(monkeypatch: pytest.MonkeyPatch, hf_dir: Path) -> None:
    code, text, _ = run_main(monkeypatch, ["chat", "--hf-dir", str(hf_dir), "--max-new-tokens", "4", "--seed", "0"], stdin="one\ntwo")
    assert code == 0 and text.count("Assistant:") == 2 and "User: two\n" in text


# --- failures ---------------------------------------------------------------------------------


def test_a_missing_run_directory_fails_in_one_paragraph(tmp_path: Path) -> None:
    result = cli("generate", "--run", str(tmp_path / "nope"), "--prompt", "x")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip() == f"error: run directory {tmp_path / 'nope'} does not exist"


def broken_runs(tmp_path: Path, model: GPTModel) -> dict[str, tuple[Path, str]]:
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.json").write_text(json.dumps(run_config.load_run_config().model_dump(mode="json")))
    wider = write_run(tmp_path / "wider", model, {**MODEL, "emb_dim": 64})
    return {
        "no config": (no_config, f"{no_config} is not a gptkit run directory (no config.json)"),
        "no checkpoint": (no_checkpoint, f"{no_checkpoint} holds no checkpoint"),
        "other shape": (wider, "model.safetensors does not fit this model (wrong shape: "),
    }


@pytest.mark.parametrize("case", ["no config", "no checkpoint", "other shape"])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_broken_run_directories_fail_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: GPTModel, case: str, command: str
) -> None:
    path, message = broken_runs(tmp_path, model)[case]
    code, out, err = run_main(monkeypatch, [command, "--run", str(path)], stdin="hi\n")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_unusable_hugging_face_folders_fail_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path) -> None:
    missing = tmp_path / "absent"
    code, _, err = run_main(monkeypatch, ["generate", "--hf-dir", str(missing)])
    assert code == 2 and err == f"error: Hugging Face checkpoint directory {missing} does not exist\n"
    code, _, err = run_main(monkeypatch, ["chat", "--hf-dir", str(run_dir)])  # a gptkit run is no HF folder
    assert code == 2 and err.startswith(f"error: no weights in {run_dir}: expected model.safetensors") and err.count("\n") == 1, err
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text('{"model_type": "llama"}')
    code, _, err = run_main(monkeypatch, ["generate", "--hf-dir", str(llama)])
    assert code == 2 and err == (
        f"error: {llama / 'config.json'}: cannot import Hugging Face model_type 'llama': only 'gpt2' is supported\n"
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--temperature", "-1"], "sampler 'temperature': value: Input should be greater than 0"),
        (["--top-p", "1.5"], "sampler 'top_p': p: Input should be less than or equal to 1"),
        (["--min-p", "-0.5"], "sampler 'min_p': p: Input should be greater than or equal to 0"),
        (["--top-k", "0"], "sampler 'top_k': k: Input should be greater than or equal to 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    ],
)
def test_bad_sampler_options_fail_before_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, option: list[str], message: str) -> None:
    code, _, err = run_main(monkeypatch, ["generate", "--run", str(tmp_path / "not even there"), *option])
    assert code == 2 and err == f"error: {message}\n"
