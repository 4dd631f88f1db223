"""move_to_huge_pages: same values, same parameters, tying kept, and the kernel really backs them with huge pages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import gptkit.kernels.huge_pages as huge_pages
from gptkit import GPTModel
from gptkit.kernels.huge_pages import move_to_huge_pages


def huge_kib_backing(t: torch.Tensor) -> int:
    """AnonHugePages of the mapping holding `t`'s first byte, from /proc/self/smaps."""
    address = t.data_ptr()
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and ":" not in first:  # a mapping's header: "start-end perms ..."
            start, end = (int(x, 16) for x in first.split("-"))
            inside = start <= address < end
        elif inside and first == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError("no mapping holds the tensor")


def small_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel.from_preset("cpu-small", n_layers=2, emb_dim=64, n_heads=2, context_length=32).eval()


needs_thp = pytest.mark.skipif(not huge_pages.huge_pages_available(), reason="transparent huge pages are off here")


@needs_thp
def test_weights_move_keeping_values_parameters_and_tying() -> None:
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    params = list(model.parameters())
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    logits = model(idx)
    assert move_to_huge_pages(model) is True
    assert list(model.parameters()) == params  # the same Parameter objects, new memory
    assert model.out_head.weight is model.tok_emb.weight
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model(idx), logits)
    # The tokens' embedding (6.4 MB here) is backed by the kernel's 2 MiB pages.
    assert model.tok_emb.weight.data_ptr() % huge_pages.HUGE_PAGE == 0
    assert huge_kib_backing(model.tok_emb.weight) >= 2048


@needs_thp
def test_moved_model_still_trains() -> None:
    model = small_model().train()
    move_to_huge_pages(model)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_nothing_moves_where_huge_pages_are_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", setting)
    model = small_model()
    pointer = model.tok_emb.weight.data_ptr()
    assert move_to_huge_pages(model) is False
    assert model.tok_emb.weight.data_ptr() == pointer


@needs_thp
def test_models_loaded_for_generation_are_moved(tmp_path: Path) -> None:
    from gptkit.generation.loading import load_model
    from gptkit.interop.hf_checkpoint import export_hf

    model = small_model()
    loaded = load_model(hf_dir=export_hf(model, tmp_path / "hf")).model
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)
    assert huge_kib_backing(loaded.tok_emb.weight) >= 2048
