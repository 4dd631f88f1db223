"""gptkit as an lm-evaluation-harness model, checked against the harness's own `hf` model on the same weights.

The task is one the test writes: a multiple-choice YAML over a local JSONL file, found
through an include path, and the weights are a local folder, so nothing is fetched.
The weights are a tiny random model exported with `export_hf`; the harness's `HFLM`
reads the export with transformers, so its numbers are independent of gptkit's code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, subprocess_env
from test_cli_generate import random_model, run_main, write_run

from gptkit import GPTModel
from gptkit.data.tokenizer import Tokenizer
from gptkit.errors import GptkitError
from gptkit.interop.hf_checkpoint import export_hf

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from gptkit.evaluation.harness import GptkitLM

TASK = "gptkit_tiny_choices"
MODEL = {"vocab_size": 50257, "emb_dim": 32, "n_heads": 2, "n_layers": 1, "context_length": 32, "weight_tying": False}
QUESTIONS = [
    {"query": "The cat sat on the", "choices": ["mat", "moon, singing loudly", "idea"], "gold": 0},
    {"query": "Two plus two is", "choices": ["four", "seven hundred", "blue"], "gold": 2},
    {"query": "She opened the door and", "choices": ["walked in.", "the the the", "banana", "flew"], "gold": 1},
    # Longer than the model's 32 positions with its answers: both sides cut it from the left.
    {"query": " ".join(f"word{i}" for i in range(30)) + " and then", "choices": ["stop", "more words follow here"], "gold": 1},
    {"query": "A man is", "choices": ["running", "a", "of the", "it"], "gold": 3},
]


def task_yaml(data: Path) -> str:
    return (
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )


@pytest.fixture(scope="module")
def model() -> GPTModel:
    return random_model(3)


@pytest.fixture(scope="module")
def hf_dir(model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hf(model, tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="module")
def run_dir(model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "r", model, MODEL)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (folder / "tiny.yaml").write_text(task_yaml(data))
    return folder


@pytest.fixture(scope="module")
def ours(model: GPTModel) -> GptkitLM:
    return GptkitLM(model, Tokenizer(), batch_size=3)


@pytest.fixture(scope="module")
def theirs(hf_dir: Path) -> HFLM:
    return HFLM(pretrained=str(hf_dir), batch_size=3, device="cpu")


def evaluated(lm: object, tasks: Path) -> dict:
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    results = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, log_samples=True, bootstrap_iters=0)
    assert results is not None
    return results


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, n) for n, a in enumerate(args)]


def test_the_tasks_loglikelihoods_and_accuracy_equal_the_hf_models(ours: GptkitLM, theirs: HFLM, tasks: Path) -> None:
    mine, reference = evaluated(ours, tasks), evaluated(theirs, tasks)
    pairs = list(zip(mine["samples"][TASK], reference["samples"][TASK], strict=True))
    assert len(pairs) == len(QUESTIONS)
    for a, b in pairs:
        assert a["arguments"] == b["arguments"]  # the same requests, built by the harness for each model
        ours_ll = [r[0][0] for r in a["resps"]]
        hf_ll = [r[0][0] for r in b["resps"]]
        assert ours_ll == pytest.approx(hf_ll, abs=1e-4)
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]
    for metric in ("acc,none", "acc_norm,none"):
        assert mine["results"][TASK][metric] == reference["results"][TASK][metric]


def test_is_greedy_is_true_for_the_models_own_greedy_continuation(ours: GptkitLM, theirs: HFLM) -> None:
    import torch

    context = Tokenizer().encode("Once upon a")
    with torch.no_grad():  # transformers' own greedy decoding of the exported weights
        ids = theirs.model.generate(torch.tensor([context]), max_new_tokens=4, do_sample=False, pad_token_id=0)[0, len(context) :].tolist()
    # As token ids: text would be tokenized afresh, and BPE need not split it as it was generated.
    asked = [(("a", "b"), context, ids), (("a", "c"), context, ids[:-1] + [(ids[-1] + 1) % 50257])]
    mine, reference = ours._loglikelihood_tokens(asked), theirs._loglikelihood_tokens(asked)
    assert [g for _, g in mine] == [g for _, g in reference] == [True, False]
    assert [ll for ll, _ in mine] == pytest.approx([ll for ll, _ in reference], abs=1e-4)
    texts = [("Once upon", " a time"), ("", "Hello world")]  # an empty context: <|endoftext|> goes first
    mine, reference = ours.loglikelihood(requests("loglikelihood", texts)), theirs.loglikelihood(requests("loglikelihood", texts))
    assert [ll for ll, _ in mine] == pytest.approx([ll for ll, _ in reference], abs=1e-4)


def test_rolling_loglikelihood_equals_the_hf_models(ours: GptkitLM, theirs: HFLM) -> None:
    # 5, about 70 and about 150 tokens: one window, and several of the model's 32 positions each.
    texts = [("short text",), ("Some text to score, " * 12,), (" ".join(f"line {i}: {i * 7 % 11}" for i in range(30)),)]
    mine = ours.loglikelihood_rolling(requests("loglikelihood_rolling", texts))
    reference = theirs.loglikelihood_rolling(requests("loglikelihood_rolling", texts))
    assert mine == pytest.approx(reference, abs=1e-4)


def test_generate_until_is_the_hf_models_greedy_text_cut_at_the_stop_string(ours: GptkitLM, theirs: HFLM) -> None:
    free = [("Once upon", {"until": ["\n\n"], "max_gen_toks": 8}), ("The", {"until": [], "max_gen_toks": 5, "do_sample": False})]
    mine = ours.generate_until(requests("generate_until", free))
    assert mine == theirs.generate_until(requests("generate_until", free)) and all(mine)
    stop = mine[0][len(mine[0]) // 2 :][:2]  # a piece from the middle of the free-running text
    cut = [("Once upon", {"until": [stop], "max_gen_toks": 8})]
    got = ours.generate_until(requests("generate_until", cut))
    assert got == theirs.generate_until(requests("generate_until", cut)) == [mine[0][: mine[0].index(stop)]]


def test_evaluate_runs_an_lm_eval_task_and_writes_its_results(
    monkeypatch: pytest.MonkeyPatch, run_dir: Path, tasks: Path, theirs: HFLM
) -> None:
    code, out, err = run_main(monkeypatch, ["evaluate", "--run", str(run_dir), "--task", f"lm-eval:{TASK}", "--include-path", str(tasks), "--batch-size", "2"])
    assert code == 0, out + err
    (path,) = (run_dir / "eval").glob(f"lm-eval-{TASK}-*.json")
    got = json.loads(path.read_text())
    reference = evaluated(theirs, tasks)["results"][TASK]
    assert (got["acc"], got["acc_norm"], got["samples"]) == (reference["acc,none"], reference["acc_norm,none"], len(QUESTIONS))
    assert got["task"] == f"lm-eval:{TASK}" and got["num_fewshot"] == 0 and got["lm_eval_version"] == lm_eval.__version__
    assert "results:" in out and path.name in out.replace("\n", "")
    out_file = run_dir / "two.json"
    code, _, err = run_main(monkeypatch, ["evaluate", "--run", str(run_dir), "--task", f"lm-eval:{TASK}", "--include-path", str(tasks), "--limit", "2", "--out", str(out_file)])
    assert code == 0 and json.loads(out_file.read_text())["samples"] == 2, err


def test_a_missing_harness_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch, hf_dir: Path, tasks: Path) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets where it is not installed
    monkeypatch.delitem(sys.modules, "gptkit.evaluation.harness")
    code, out, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_dir), "--task", f"lm-eval:{TASK}", "--include-path", str(tasks)])
    assert code == 2 and out == "", err
    assert err.startswith("error: lm-eval tasks need the lm-evaluation-harness, which cannot be imported") and 'pip install -e ".[eval]"' in err


def test_option_mistakes_are_named_before_anything_loads(monkeypatch: pytest.MonkeyPatch, hf_dir: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-run")  # never read: each mistake is found first
    cases = {
        ("--task", "lm-eval:x", "--data", "a.txt"): "--data is not used by lm-eval tasks (the task names its own data); leave it out",
        ("--task", "perplexity", "--data", "a.txt", "--include-path", "d"): "--include-path is for lm-eval tasks only; --task perplexity does not use it",
        ("--task", "perplexity"): "--task perplexity needs --data SOURCE (the text to score)",
        ("--task", "lm-eval:x", "--num-fewshot", "-1"): "--num-fewshot must be 0 or more, got -1",
        ("--task", "lm-eval:x", "--batch-size", "0"): "--batch-size must be at least 1, got 0",
        ("--task", "lm-eval"): "argument --task: expected perplexity, multiple-choice or lm-eval:TASK (a harness task), got 'lm-eval'",
    }
    for args, message in cases.items():
        code, _, err = run_main(monkeypatch, ["evaluate", "--run", missing, *args])
        assert code == 2 and message in err, (args, err)
    code, _, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_dir), "--task", "lm-eval:x", "--include-path", missing])
    assert code == 2 and f"--include-path {missing} is not a folder; expected a folder of harness task YAML files" in err
    # The harness's own command line: what --model_args and --batch_size may hold.
    for model_args, message in {
        "": "--model_args for gptkit: give exactly one of run=RUN_DIR, hf_dir=DIR or init_from=SOURCE",
        f"hf_dir={hf_dir},run={missing}": "give exactly one of run=RUN_DIR",
        f"hf_dir={hf_dir},batch_size=many": "batch_size must be a whole number or 'auto', got 'many'",
        f"hf_dir={hf_dir},dtyp=bfloat16": "unknown dtyp; expected run, hf_dir, init_from, dtype, batch_size, max_gen_toks",
    }.items():
        with pytest.raises(GptkitError, match=re.escape(message)):
            GptkitLM.create_from_arg_string(model_args)


@pytest.mark.slow
def test_an_unknown_task_is_named(monkeypatch: pytest.MonkeyPatch, hf_dir: Path, tasks: Path) -> None:
    # Not in the include path, so the harness's whole task index is read (about ten seconds).
    code, _, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_dir), "--task", "lm-eval:hellaswagg", "--include-path", str(tasks)])
    assert code == 2
    assert f"unknown lm-eval task 'hellaswagg': not one of the harness's tasks nor in {tasks}; lm-eval ls tasks lists them" in err


@pytest.mark.slow
def test_the_harness_command_line_runs_gptkit_through_this_module(hf_dir: Path, tasks: Path, theirs: HFLM, tmp_path: Path) -> None:
    args = ["run", "--model", "gptkit", "--model_args", f"hf_dir={hf_dir}", "--tasks", TASK, "--include_path", str(tasks),
            "--output_path", str(tmp_path / "out")]
    env = subprocess_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-m", "gptkit.evaluation.harness", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    got = json.loads(path.read_text())["results"][TASK]
    reference = evaluated(theirs, tasks)["results"][TASK]
    assert (got["acc,none"], got["acc_norm,none"]) == (reference["acc,none"], reference["acc_norm,none"])
    bad = subprocess.run([sys.executable, "-m", "gptkit.evaluation.harness", *args[:3], "--model_args", f"run={tmp_path / 'nope'}", *args[5:]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and f"error: run directory {tmp_path / 'nope'} does not exist" in bad.stderr


def test_gptkit_and_its_other_commands_do_not_import_the_harness(hf_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("A few words to score, and a few more after them.")
    argv = ["main.py", "evaluate", "--hf-dir", str(hf_dir), "--task", "perplexity", "--data", str(text), "--out", str(tmp_path / "r.json")]
    code = (
        "import runpy, sys\n"
        "import gptkit, gptkit.evaluation.harness_run\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('lm_eval' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "False" and (tmp_path / "r.json").exists()
