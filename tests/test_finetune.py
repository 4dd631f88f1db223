"""Finetuning runs end to end: instruction tuning and classification through the trainer and the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from test_cli_generate import greedy_text, run_main

import config as run_config
from commands.train import prepare_examples
from gptkit.data.instruction import Example
from gptkit.data.instruction_batches import fixed_instruction_batches
from gptkit.data.sample_sets import instruction_records, review_rows, write_sample_sets
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.classify import classify_ids
from gptkit.plugins import default_registry
from gptkit.training.checkpoint import load_run_model
from trainer import Trainer

TINY = [
    "model.emb_dim=64", "model.n_heads=4", "model.n_layers=2", "model.context_length=64", "run.dtype=float32",
    "train.batch_size=4", "train.eval_every=1000", 'train.callbacks=["checkpoint"]',
]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    write_sample_sets(folder)
    (folder / "twenty.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instruction_records(20)))
    return folder


def make_trainer(tmp_path: Path, *overrides: str, run: str = "run", resume: Path | None = None) -> Trainer:
    cfg = run_config.load_run_config(overrides=[*TINY, f"run.out_dir={tmp_path}", *overrides])
    tokenizer = Tokenizer()
    data = prepare_examples(cfg, tokenizer, default_registry())
    (tmp_path / run).mkdir(exist_ok=True)
    return Trainer(cfg, tmp_path / run, data, tokenizer, default_registry(), resume_from=resume)


def test_a_tiny_model_learns_twenty_instructions_and_answers_one(sample_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path, "data.format=instruction", f"data.path={sample_dir / 'twenty.jsonl'}", "data.val_fraction=0.01",
        "train.max_steps=300", "train.lr=1e-2", "train.min_lr=1e-3",
    )
    trainer.fit()
    # The per-token loss over every training example, in the evaluation's own batches.
    trainer.val_batches = fixed_instruction_batches(trainer.train_batches.encoded, 4, trainer.eot_id)
    assert trainer.evaluate() < 0.1
    style = default_registry().create("prompt_style", "alpaca")
    record = instruction_records(20)[0]
    held_out = {e.source for e in trainer.train_batches.encoded}
    example = Example.from_alpaca(record["instruction"], record["input"], record["output"])
    assert any("line 1" in source for source in held_out)  # the first record is a training one
    reply = greedy_text(trainer.model.eval(), style.prompt(example.messages[:1]), 40)
    assert reply == record["output"]


def test_an_instruction_run_resumed_gives_the_same_losses(sample_dir: Path, tmp_path: Path) -> None:
    args = ["data.format=instruction", f"data.path={sample_dir / 'instructions.jsonl'}", "model.drop_rate=0.1", "train.max_steps=6"]

    def losses(trainer: Trainer, steps: range) -> list[float]:
        return [trainer.train_step(step)[0] for step in steps]

    straight = make_trainer(tmp_path, *args, run="a")
    expected = losses(straight, range(6))
    first = make_trainer(tmp_path, *args, run="b")
    assert losses(first, range(3)) == expected[:3]
    first.state.step = 3
    checkpoint = first.save_checkpoint()
    torch.manual_seed(12345)  # the checkpoint's RNG, not this, must decide the dropout
    resumed = make_trainer(tmp_path, *args, run="b", resume=checkpoint)
    assert losses(resumed, range(3, 6)) == expected[3:]


def test_the_epoch_budget_counts_passes(sample_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "data.format=instruction", f"data.path={sample_dir / 'instructions.jsonl'}", "train.max_steps=null", "train.max_epochs=2", "train.scheduler=constant")
    n = len(trainer.train_batches.encoded)
    assert trainer.total_steps == -(-2 * n // 4)
    summary = trainer.fit()
    assert summary.steps == trainer.total_steps and summary.stop_reason == f"reached train.max_epochs=2 ({trainer.total_steps} steps)"


def test_a_keyword_classifier_reaches_95_percent_within_a_minute(sample_dir: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    trainer = make_trainer(
        tmp_path, "data.format=classification", f"data.path={sample_dir / 'reviews.csv'}", "data.val_fraction=0.2",
        "train.max_steps=120", "train.lr=3e-3", "train.batch_size=8",
    )
    assert trainer.cfg.model.head.name == "last_token" and trainer.cfg.data.labels == ["negative", "positive"]
    trainer.fit()
    _, scores = trainer.evaluate_with_scores()
    assert time.perf_counter() - started < 60
    assert scores["accuracy"] >= 0.95 and scores["f1"] >= 0.95, scores
    # The reported accuracy is what the validation texts' predictions give.
    val = trainer.val_batches
    correct = sum(int((classify_ids(trainer.model, x, torch.arange(x.shape[1])[None] < n[:, None]).argmax(-1) == y).sum()) for x, n, y in val)
    assert scores["accuracy"] == correct / sum(len(y) for _, _, y in val)


def test_left_and_right_padding_give_the_same_prediction(sample_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "data.format=classification", f"data.path={sample_dir / 'reviews.csv'}", "train.max_steps=5")
    model = trainer.model.eval()
    tok = Tokenizer()
    texts = [text for text, _ in review_rows(4)]
    rows = [tok.encode(t) for t in texts]
    width = max(map(len, rows)) + 3
    right = torch.full((len(rows), width), tok.eot_id)
    left = right.clone()
    for i, ids in enumerate(rows):
        right[i, : len(ids)] = torch.tensor(ids)
        left[i, width - len(ids) :] = torch.tensor(ids)
    alone = torch.cat([classify_ids(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool)) for ids in rows])
    from_right = classify_ids(model, right, torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None])
    from_left = classify_ids(model, left, torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None])
    torch.testing.assert_close(from_right, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(from_left, alone, rtol=0, atol=1e-6)


def test_classify_prints_each_label_and_its_probability(monkeypatch: pytest.MonkeyPatch, sample_dir: Path, tmp_path: Path) -> None:
    args = [f"--set={item}" for item in TINY] + [
        "--set", "data.format=classification", "--set", f"data.path={sample_dir / 'reviews.csv'}", "--set", "train.max_steps=60",
        "--set", "train.lr=3e-3", "--set", "train.batch_size=8", "--set", f"run.out_dir={tmp_path}", "--set", "run.name=cls",
    ]
    code, out, err = run_main(monkeypatch, args)
    assert code == 0, out + err
    run_dir = tmp_path / "cls"
    code, out, err = run_main(monkeypatch, ["classify", "--run", str(run_dir), "--text", "A wonderful film.", "--text", "The plot was dreadful."])
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    model = load_run_model(run_dir)
    tok = Tokenizer()
    for (label, probability), text in zip(lines, ["A wonderful film.", "The plot was dreadful."]):
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            expected = model.out_head.pool(model(ids), torch.tensor([ids.shape[1]])).softmax(-1)[0]
        assert label == ["negative", "positive"][int(expected.argmax())]
        assert float(probability) == pytest.approx(float(expected.max()), abs=5e-5)
    for flag in ("--run", "--init-from"):  # a classifier has no next tokens to score
        code, _, err = run_main(monkeypatch, ["evaluate", flag, str(run_dir), "--task", "perplexity", "--data", str(sample_dir / "notes.txt")])
        assert code == 2 and f"{run_dir} is a classifier (model.head last_token); use python main.py classify" in err, err
    code, _, err = run_main(monkeypatch, ["classify", "--run", str(run_dir.parent / "nope"), "--text", "x"])
    assert code == 2 and f"run directory {run_dir.parent / 'nope'} does not exist" in err
    lm_run = tmp_path / "lm"
    code, out, err = run_main(monkeypatch, [*args[: len(TINY)], "--set", f"data.path={sample_dir / 'notes.txt'}", "--set", "train.max_steps=1",
                                            "--set", "train.eval_batches=1", "--set", f"run.out_dir={tmp_path}", "--set", "run.name=lm"])
    assert code == 0, out + err
    code, _, err = run_main(monkeypatch, ["classify", "--run", str(lm_run), "--text", "x"])
    assert code == 2 and f"{lm_run} is not a classifier (model.head lm); classify needs a run trained with data.format=classification" in err


def test_classification_data_mistakes_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "nolabel.csv").write_text("text,category\nfine film,positive\n")
    (tmp_path / "one.csv").write_text("text,label\nfine film,positive\ngreat film,positive\nnice film,positive\n")
    (tmp_path / "array.jsonl").write_text('{"text": "ok", "label": "a"}\n["not", "an", "object"]\n')
    (tmp_path / "badlabel.jsonl").write_text('{"text": "ok", "label": 1.5}\n')
    cases = {
        "nolabel.csv": "nolabel.csv line 2: no 'label' column (data.label_field); the columns are: text, category",
        "one.csv": "one.csv: every example has the label 'positive'; classification needs at least two classes",
        "array.jsonl": "array.jsonl line 2: expected a JSON object with a text and a label, got an array",
        "badlabel.jsonl": "badlabel.jsonl line 1: 'label' should be a string or a whole number, got a number",
    }
    for name, message in cases.items():
        code, _, err = run_main(monkeypatch, ["--set", "data.format=classification", "--set", f"data.path={tmp_path / name}", "--set", f"run.out_dir={tmp_path / 'runs'}"])
        assert code == 2 and f"error: {tmp_path / name}" in err and message in err, err
    code, _, err = run_main(monkeypatch, ["--set", "data.format=classification", "--set", f"run.out_dir={tmp_path / 'runs'}"])
    assert code == 2 and "data.format=classification needs data.path: a file of classification examples" in err
    code, _, err = run_main(monkeypatch, ["--set", "model.head=last_token"])
    assert code == 2 and "model.head 'last_token' classifies; it needs data.format=classification (or model.head=lm)" in err
    assert not (tmp_path / "runs").exists()  # a refused start leaves nothing behind


def test_a_prompt_style_that_is_not_registered_is_named_with_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_main(monkeypatch, ["--set", "data.format=instruction", "--set", "data.prompt_style=alpacca"])
    assert code == 2, err
    assert "data.prompt_style: unknown prompt_style 'alpacca' (did you mean 'alpaca'?); valid prompt_style names: alpaca, chat" in err
