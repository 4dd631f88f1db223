"""LR schedules against hand-computed values, and a plugin scheduler selected by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gptkit import build_registry
from gptkit.errors import RegistryError

MAX, MIN, TOTAL, WARM = 6e-4, 6e-5, 100, 10


@pytest.fixture(scope="module")
def registry():
    return build_registry(plugin_dirs=[], entry_points=False)


def make(registry, name: str, **params):
    return registry.create("scheduler", {"name": name, **params}, max_lr=MAX, min_lr=MIN, total_steps=TOTAL)


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_warmup_is_linear_from_zero_to_max(registry, name: str) -> None:
    lr = make(registry, name, warmup_steps=WARM)
    assert [lr(s) for s in range(WARM)] == pytest.approx([MAX * (s + 1) / WARM for s in range(WARM)])
    assert lr(WARM) == pytest.approx(MAX)


def test_cosine_hand_values(registry) -> None:
    lr = make(registry, "cosine", warmup_steps=WARM)
    middle = WARM + (TOTAL - WARM) // 2  # progress exactly 0.5
    assert lr(middle) == pytest.approx((MAX + MIN) / 2)
    quarter = WARM + (TOTAL - WARM) // 4  # 22.5 of 90 steps: not exact, compute by hand
    p = (quarter - WARM) / (TOTAL - WARM)
    assert lr(quarter) == pytest.approx(MIN + 0.5 * (MAX - MIN) * (1 + math.cos(math.pi * p)))
    assert lr(TOTAL) == pytest.approx(MIN)
    assert lr(TOTAL + 50) == pytest.approx(MIN)  # past the end it stays at min_lr


def test_linear_hand_values(registry) -> None:
    lr = make(registry, "linear", warmup_steps=WARM)
    assert lr(WARM + 45) == pytest.approx(MAX + (MIN - MAX) * 0.5)
    assert lr(TOTAL) == pytest.approx(MIN)


def test_constant_ignores_min_lr(registry) -> None:
    lr = make(registry, "constant", warmup_steps=0)
    assert {lr(s) for s in (0, 50, 100, 10_000)} == {MAX}


def test_wsd_plateau_then_decay(registry) -> None:
    lr = make(registry, "wsd", warmup_steps=WARM, decay_fraction=0.2)
    assert lr(79) == pytest.approx(MAX)  # decay starts at step 80 = 100 - 20
    assert lr(80) == pytest.approx(MAX)
    assert lr(90) == pytest.approx(MAX + (MIN - MAX) * 0.5)
    assert lr(TOTAL) == pytest.approx(MIN)


def test_unknown_param_refused(registry) -> None:
    with pytest.raises(RegistryError, match="warmup_step"):
        make(registry, "cosine", warmup_step=3)


def test_plugin_adds_a_scheduler_by_name(tmp_path: Path) -> None:
    (tmp_path / "step_decay.py").write_text(
        "from gptkit import ComponentParams, hookimpl\n"
        "class P(ComponentParams):\n"
        "    every: int = 10\n"
        "def step_decay(max_lr, min_lr, total_steps, every):\n"
        "    return lambda step: max(min_lr, max_lr * 0.5 ** (step // every))\n"
        "@hookimpl\n"
        "def gptkit_register_components(registry):\n"
        "    registry.register('scheduler', 'step_decay', step_decay, params=P)\n"
    )
    registry = build_registry(plugin_dirs=[tmp_path], entry_points=False)
    lr = registry.create("scheduler", {"name": "step_decay", "every": 5}, max_lr=1.0, min_lr=0.1, total_steps=100)
    assert [lr(s) for s in (0, 4, 5, 10, 15, 100)] == [1.0, 1.0, 0.5, 0.25, 0.125, 0.1]
    assert registry.get("scheduler", "step_decay").source == f"{tmp_path.name}/step_decay.py"
