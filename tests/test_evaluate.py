"""`main.py evaluate`: perplexity and multiple-choice accuracy, checked against GPT2LMHeadModel on the same weights."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_cli_generate import run_main

from gptkit.data.tokenizer import Tokenizer

hf = pytest.importorskip("transformers")

CONTEXT = 32


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    config = hf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT, vocab_size=50257)
    hf.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "held_out.txt"
    path.write_text("".join(f"Line {i} of a text nobody trained on, with words {i * 7 % 13}.\n" for i in range(12)))
    return path


def guide_loss(model: torch.nn.Module, ids: torch.Tensor, stride: int) -> float:
    """Hugging Face's perplexity-guide loop, each window's loss times the tokens it actually scored."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + CONTEXT, len(ids))
        target_len = end - prev_end
        input_ids = ids[None, begin:end]
        labels = input_ids.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=labels).loss
        scored = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one inside
        nll, count, prev_end = nll + loss.item() * scored, count + scored, end
        if end == len(ids):
            break
    return nll / count


def results(folder: Path) -> dict:
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_perplexity_equals_the_guides_computation_with_gpt2lmheadmodel(
    monkeypatch: pytest.MonkeyPatch, hf_folder: Path, text_file: Path, tmp_path: Path, stride: int
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_folder), "--task", "perplexity", "--data", str(text_file), "--stride", str(stride)])
    assert code == 0, out + err
    got = results(tmp_path / "eval")
    ids = torch.tensor(Tokenizer().encode(text_file.read_text()))
    expected = guide_loss(hf.GPT2LMHeadModel.from_pretrained(hf_folder).eval(), ids, stride)
    assert got["loss"] == pytest.approx(expected, abs=1e-4)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))
    # Every token but the first is scored once; with a stride of the whole context, each window's first is not.
    windows = math.ceil((len(ids) - CONTEXT) / stride) + 1
    assert got["tokens"] == (len(ids) - 1 if stride < CONTEXT else len(ids) - windows)
    assert got["data_sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest() and got["stride"] == stride


def hellaswag_records() -> list[dict]:
    return [
        {"ctx": "The cat sat on the", "endings": ["mat.", "moon, singing loudly.", "idea", "chair"], "label": 0},
        {"ctx": "She opened the door and", "endings": ["walked in.", "the the the", "banana", "flew"], "label": "1"},
        {"query": "Two plus two is", "choices": ["four", "seven hundred", "blue"], "gold": 2},
        {"ctx": "A man is", "endings": ["running", "a", "of the", "it"], "label": 3},
    ]


def reference_scores(model: torch.nn.Module, records: list[dict]) -> tuple[float, float]:
    """acc and acc_norm as build-nanogpt's hellaswag.py computes them, from GPT2LMHeadModel's logits."""
    tok = Tokenizer()
    acc = acc_norm = 0
    for r in records:
        context, endings = r.get("ctx", r.get("query")), r.get("endings", r.get("choices"))
        label = int(r.get("label", r.get("gold")))
        sums, means = [], []
        for ending in endings:
            ctx_ids, end_ids = tok.encode(context), tok.encode(" " + ending)
            ids = torch.tensor([ctx_ids + end_ids])
            with torch.no_grad():
                logp = F.log_softmax(model(ids).logits[0, :-1], -1)
            picked = logp[torch.arange(len(ctx_ids) - 1, ids.shape[1] - 1), torch.tensor(end_ids)]
            sums.append(picked.sum().item())
            means.append(picked.mean().item())
        acc += max(range(len(sums)), key=sums.__getitem__) == label
        acc_norm += max(range(len(means)), key=means.__getitem__) == label
    return acc / len(records), acc_norm / len(records)


def test_multiple_choice_accuracy_equals_hellaswag_scoring_of_the_same_weights(
    monkeypatch: pytest.MonkeyPatch, hf_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in hellaswag_records()))
    out_file = tmp_path / "mc.json"
    code, out, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_folder), "--task", "multiple-choice", "--data", str(data), "--out", str(out_file)])
    assert code == 0, out + err
    got = json.loads(out_file.read_text())
    acc, acc_norm = reference_scores(hf.GPT2LMHeadModel.from_pretrained(hf_folder).eval(), hellaswag_records())
    assert (got["acc"], got["acc_norm"], got["questions"]) == (acc, acc_norm, 4)
    code, out, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_folder), "--task", "multiple-choice", "--data", str(data), "--out", str(out_file), "--limit", "2"])
    assert code == 0 and json.loads(out_file.read_text())["questions"] == 2


def test_bad_evaluation_inputs_are_named(monkeypatch: pytest.MonkeyPatch, hf_folder: Path, text_file: Path, tmp_path: Path) -> None:
    cases = {
        '{"ctx": "a", "label": 0}\n': "line 1: missing 'endings'; expected JSON lines of {ctx, endings, label}",
        '{"ctx": "a", "endings": ["b", "c"], "label": 5}\n': "line 1: 'label' is 5; expected the index of one of the 2 endings (0 to 1)",
        '[1, 2]\n': "line 1: expected a JSON object, got an array",
    }
    for body, message in cases.items():
        data = tmp_path / "q.jsonl"
        data.write_text(body)
        code, _, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_folder), "--task", "multiple-choice", "--data", str(data), "--out", str(tmp_path / "r.json")])
        assert code == 2 and f"{data} {message}" in err, err
    code, _, err = run_main(monkeypatch, ["evaluate", "--hf-dir", str(hf_folder), "--task", "perplexity", "--data", str(text_file), "--stride", "33", "--out", str(tmp_path / "r.json")])
    assert code == 2 and "--stride must be between 1 and the context length 32, got 33" in err
    assert not (tmp_path / "r.json").exists()


def test_the_evaluate_callback_reports_what_the_evaluate_command_computes(monkeypatch: pytest.MonkeyPatch, text_file: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text_file.read_text() * 10)  # enough for validation windows of 32 tokens
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in hellaswag_records()))
    callbacks = [
        "checkpoint", "metrics", "loss_plot",
        {"name": "evaluate", "task": "multiple-choice", "data": str(questions)},
        {"name": "evaluate", "task": "perplexity", "data": str(text_file), "stride": 16, "label": "notes"},
    ]
    settings = [
        "model.emb_dim=32", "model.n_heads=2", "model.n_layers=2", f"model.context_length={CONTEXT}", "run.dtype=float32",
        "train.batch_size=2", "train.max_steps=4", "train.eval_every=2", "train.eval_batches=1", f"data.path={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path}", "run.name=r", f"train.callbacks={json.dumps(callbacks)}",
    ]
    code, out, err = run_main(monkeypatch, [arg for item in settings for arg in ("--set", item)])
    assert code == 0, out + err
    evals = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [2, 4] and all(set(e["scores"]) == {"mc_acc", "mc_acc_norm", "notes_loss"} for e in evals)
    final = evals[-1]["scores"]
    for task, data, extra in (("multiple-choice", questions, []), ("perplexity", text_file, ["--stride", "16"])):
        out_file = tmp_path / f"{task}.json"
        code, _, err = run_main(monkeypatch, ["evaluate", "--run", str(tmp_path / "r"), "--task", task, "--data", str(data), "--out", str(out_file), *extra])
        assert code == 0, err
        got = json.loads(out_file.read_text())
        if task == "perplexity":
            assert final["notes_loss"] == pytest.approx(got["loss"], abs=1e-5)
        else:
            assert (final["mc_acc"], final["mc_acc_norm"]) == (got["acc"], got["acc_norm"])
