"""Plugins: folder plugins, entry-point packages, their failures, and the alternatives shipped in plugins/.

The entry-point tests install nothing: a throwaway distribution (a package folder
plus a ``*.dist-info`` with ``entry_points.txt``) is put on ``PYTHONPATH`` of a
subprocess, exactly as pip would leave it in site-packages.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env
from pydantic import ValidationError
from torch import nn

import gptkit.plugins as plugins_module
from gptkit import (
    GPTModel,
    ModelConfig,
    PluginError,
    Registry,
    RegistryError,
    build_registry,
    default_registry,
    describe_validation_error,
    hookimpl,
)
from gptkit.plugins import (
    DISABLE_AUTOLOAD_ENV,
    PLUGIN_DIRS_ENV,
    checkout_plugin_dir,
    default_plugin_dirs,
)

DOUBLE = torch.float64


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def norm_plugin(name: str, **kwargs: str) -> str:
    """Source of a plugin file registering an identity norm called `name`."""
    extra = "".join(f", {k}={v}" for k, v in kwargs.items())
    return f"""
        from torch import nn
        from gptkit import hookimpl

        @hookimpl
        def gptkit_register_components(registry):
            registry.register("norm", "{name}", lambda dim: nn.Identity(){extra})
        """


def folder_registry(folder: Path) -> Registry:
    return build_registry(plugin_dirs=[folder], entry_points=False)


# --- folder plugins -----------------------------------------------------------------------


def test_every_file_in_a_plugin_folder_is_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "myplugins"
    write(folder, "every_a.py", norm_plugin("every_norm"))
    write(
        folder,
        "every_b.py",
        """
        from torch import nn
        from gptkit import hookimpl

        def helper():  # not a hook: ignored
            return 1

        @hookimpl
        def gptkit_register_components(registry):
            registry.register("activation", "every_act", nn.Tanh, description="tanh")
            registry.register("sampler", "every_sampler", lambda: "s")
        """,
    )
    write(folder, "_private.py", "raise RuntimeError('files starting with _ are not plugins')\n")
    write(folder, "notes.txt", "not python")
    registry = folder_registry(folder)
    assert registry.get("norm", "every_norm").source == "myplugins/every_a.py"
    assert registry.get("activation", "every_act").source == "myplugins/every_b.py"
    assert registry.get("sampler", "every_sampler").source == "myplugins/every_b.py"
    assert isinstance(registry.create("activation", "every_act"), nn.Tanh)
    # the built-in components are always there; the checkout's plugins/ only when asked for
    assert registry.get("norm", "layernorm").source == "built-in"
    assert "rmsnorm" not in registry.names("norm")


def test_plugin_with_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "syntax_broken.py", "def gptkit_register_components(registry)\n    pass\n")
    with pytest.raises(PluginError) as err:
        folder_registry(tmp_path)
    assert str(err.value).startswith(f"plugin file {path} failed to import: SyntaxError: ")
    assert "gptkit_plugins.syntax_broken" not in sys.modules


def test_plugin_with_import_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "import_broken.py", "import gptkit_no_such_module_xyz\n")
    with pytest.raises(PluginError) as err:
        folder_registry(tmp_path)
    assert str(err.value) == (
        f"plugin file {path} failed to import: ModuleNotFoundError: No module named 'gptkit_no_such_module_xyz'"
    )


def test_plugin_registering_a_taken_name_fails_naming_the_plugin(tmp_path: Path) -> None:
    write(tmp_path / "thirdparty", "taken_plug.py", norm_plugin("layernorm"))
    with pytest.raises(RegistryError) as err:
        folder_registry(tmp_path / "thirdparty")
    assert str(err.value) == (
        "thirdparty/taken_plug.py registers norm 'layernorm', but that name is already taken by built-in; "
        "pass override=True to replace it on purpose"
    )


def test_plugin_may_override_on_purpose(tmp_path: Path) -> None:
    write(tmp_path / "mine", "override_plug.py", norm_plugin("layernorm", override="True"))
    registry = folder_registry(tmp_path / "mine")
    assert registry.get("norm", "layernorm").source == "mine/override_plug.py"
    assert isinstance(registry.create("norm", "layernorm", 8), nn.Identity)


def test_plugin_whose_hook_raises_is_named(tmp_path: Path) -> None:
    write(
        tmp_path / "raising",
        "raising_plug.py",
        """
        from gptkit import hookimpl

        @hookimpl
        def gptkit_register_components(registry):
            1 / 0
        """,
    )
    with pytest.raises(PluginError) as err:
        folder_registry(tmp_path / "raising")
    assert str(err.value) == "plugin raising/raising_plug.py failed while registering components: ZeroDivisionError: division by zero"


def test_misspelt_marked_hook_is_rejected(tmp_path: Path) -> None:
    write(
        tmp_path / "typo",
        "typo_marked.py",
        """
        from gptkit import hookimpl

        @hookimpl
        def gptkit_register_componets(registry):
            registry.register("norm", "never_seen", lambda dim: None)
        """,
    )
    with pytest.raises(PluginError) as err:
        folder_registry(tmp_path / "typo")
    message = str(err.value)
    assert message.startswith(
        "plugin typo/typo_marked.py implements unknown hook 'gptkit_register_componets' "
        "(did you mean 'gptkit_register_components'?); gptkit hooks: "
    )
    assert "gptkit_register_components" in message.split("gptkit hooks: ")[1].split(", ")


def test_misspelt_unmarked_hook_is_rejected(tmp_path: Path) -> None:
    write(tmp_path / "typo2", "typo_unmarked.py", "def gptkit_register_component(registry):\n    pass\n")
    with pytest.raises(PluginError, match=re.escape("plugin typo2/typo_unmarked.py implements unknown hook 'gptkit_register_component' (did you mean 'gptkit_register_components'?)")):
        folder_registry(tmp_path / "typo2")


def test_hook_without_marker_is_rejected(tmp_path: Path) -> None:
    write(tmp_path / "nomark", "unmarked_plug.py", "def gptkit_register_components(registry):\n    pass\n")
    with pytest.raises(PluginError) as err:
        folder_registry(tmp_path / "nomark")
    assert str(err.value) == (
        "plugin nomark/unmarked_plug.py defines gptkit_register_components without @gptkit.hookimpl, so it would never be called"
    )


def test_hook_with_wrong_argument_is_rejected_by_pluggy(tmp_path: Path) -> None:
    write(
        tmp_path / "badarg",
        "badarg_plug.py",
        """
        from gptkit import hookimpl

        @hookimpl
        def gptkit_register_components(reg):
            pass
        """,
    )
    with pytest.raises(PluginError) as err:
        folder_registry(tmp_path / "badarg")
    message = str(err.value)
    assert message.startswith("plugin badarg/badarg_plug.py is invalid: ")
    assert "Argument(s) {'reg'} are declared in the hookimpl but can not be found in the hookspec" in message


def test_unprefixed_functions_and_optional_unknown_hooks_are_allowed(tmp_path: Path) -> None:
    write(
        tmp_path / "relaxed",
        "relaxed_plug.py",
        """
        from gptkit import hookimpl

        def register_components(registry):  # no gptkit_ prefix: just a helper
            raise AssertionError("never called")

        @hookimpl(optionalhook=True)
        def gptkit_from_a_newer_gptkit(registry):
            pass

        @hookimpl
        def gptkit_register_components(registry):
            registry.register("norm", "relaxed_norm", lambda dim: None)
        """,
    )
    assert "relaxed_norm" in folder_registry(tmp_path / "relaxed").names("norm")


def test_missing_plugin_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as err:
        folder_registry(tmp_path / "nowhere")
    assert str(err.value) == f"plugin folder {tmp_path / 'nowhere'} does not exist"


def test_same_folder_twice_loads_each_plugin_once(tmp_path: Path) -> None:
    write(tmp_path / "twice", "twice_plug.py", norm_plugin("twice_norm"))
    registry = build_registry(plugin_dirs=[tmp_path / "twice", tmp_path / "twice"], entry_points=False)
    assert registry.get("norm", "twice_norm").source == "twice/twice_plug.py"


def test_same_file_name_in_two_folders_loads_both(tmp_path: Path) -> None:
    write(tmp_path / "one" / "plugins", "twin_plug.py", norm_plugin("twin_one"))
    write(tmp_path / "two" / "plugins", "twin_plug.py", norm_plugin("twin_two"))
    registry = build_registry(plugin_dirs=[tmp_path / "one" / "plugins", tmp_path / "two" / "plugins"], entry_points=False)
    assert {"twin_one", "twin_two"} <= set(registry.names("norm"))


def test_extra_plugin_objects_are_registered_under_their_label() -> None:
    class Extra:
        @hookimpl
        def gptkit_register_components(self, registry: Registry) -> None:
            registry.register("callback", "extra_cb", lambda: "cb")

    registry = build_registry(plugin_dirs=[], entry_points=False, extra_plugins=[("my test", Extra())])
    assert registry.get("callback", "extra_cb").source == "my test"


def test_plugin_dirs_env_adds_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "env_a", "env_a_plug.py", norm_plugin("env_a_norm"))
    write(tmp_path / "env_b", "env_b_plug.py", norm_plugin("env_b_norm"))
    monkeypatch.setenv(PLUGIN_DIRS_ENV, f"{tmp_path / 'env_a'}{os.pathsep}{tmp_path / 'env_b'}")
    assert default_plugin_dirs() == [REPO_ROOT / "plugins", tmp_path / "env_a", tmp_path / "env_b"]
    registry = build_registry(entry_points=False)
    assert registry.get("norm", "env_a_norm").source == "env_a/env_a_plug.py"
    assert registry.get("norm", "env_b_norm").source == "env_b/env_b_plug.py"
    assert registry.get("norm", "rmsnorm").source == "plugins/rmsnorm.py"  # the checkout's folder still comes first


def test_plugin_folder_given_as_dot_is_labelled_by_its_real_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "dotted", "dot_plug.py", norm_plugin("dot_norm"))
    monkeypatch.chdir(tmp_path / "dotted")
    assert folder_registry(Path(".")).get("norm", "dot_norm").source == "dotted/dot_plug.py"


def test_checkout_plugin_folder_is_found() -> None:
    assert checkout_plugin_dir() == REPO_ROOT / "plugins"


@pytest.mark.parametrize(("value", "loads"), [(None, True), ("", True), ("0", True), ("1", False)])
def test_disable_autoload_env_skips_entry_points(value: str | None, loads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def fake_entry_points() -> list[tuple[str, object]]:
        calls.append(True)
        return []

    monkeypatch.setattr(plugins_module, "load_entry_point_plugins", fake_entry_points)
    if value is None:
        monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    else:
        monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, value)
    build_registry(plugin_dirs=[])
    assert calls == ([True] if loads else [])


def test_model_with_a_file_plugin_component_pickles() -> None:
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=32, context_length=8, emb_dim=16, n_layers=1, n_heads=2, norm="rmsnorm")).eval()
    assert type(model.final_norm).__module__ == "gptkit_plugins.rmsnorm"
    copy = pickle.loads(pickle.dumps(model))
    idx = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(copy(idx), model(idx))


# --- entry-point plugins: a throwaway installed distribution -----------------------------------

SCALENORM_PLUGIN = """
    '''A third-party norm, shipped in its own package.'''
    import torch
    from pydantic import Field
    from torch import nn
    from gptkit import ComponentParams, hookimpl


    class ScaleNorm(nn.Module):
        '''g * x / ||x|| with one learned scalar g (Nguyen & Salazar, 2019).'''

        def __init__(self, dim, eps=1e-5):
            super().__init__()
            self.eps = eps
            self.g = nn.Parameter(torch.tensor(float(dim) ** 0.5))

        def forward(self, x):
            return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


    class ScaleNormParams(ComponentParams):
        eps: float = Field(1e-5, gt=0)


    @hookimpl
    def gptkit_register_components(registry):
        registry.register("norm", "scalenorm", ScaleNorm, params=ScaleNormParams, description="ScaleNorm: one scalar gain")
    """


def make_distribution(site: Path, dist: str, package: str, plugin_source: str) -> Path:
    write(site / package, "__init__.py", "")
    write(site / package, "plugin.py", plugin_source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    write(info, "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    write(info, "entry_points.txt", f"[gptkit]\n{package.removesuffix('_pkg')} = {package}.plugin\n")
    return site


@pytest.fixture(scope="module")
def good_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_distribution(tmp_path_factory.mktemp("site_good"), "myplug-dist", "myplug_pkg", SCALENORM_PLUGIN)


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = "raise ImportError('needs libfancy, which is not installed')\n"
    return make_distribution(tmp_path_factory.mktemp("site_broken"), "brokenplug-dist", "brokenplug_pkg", source)


@pytest.fixture
def on_sys_path(monkeypatch: pytest.MonkeyPatch):
    """Put a site folder on sys.path for this test only.

    The process-wide registry is built first, so it can never pick up the throwaway
    distribution and leak it into other tests.
    """
    default_registry()

    def add(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))

    return add


def run_python(args: list[str], site: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    extra = {"PYTHONPATH": str(site)} if site is not None else {}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=subprocess_env(**extra, **env),
        capture_output=True, text=True, timeout=120,
    )


SELECT_SCALENORM = """
import json, torch
from gptkit import GPTModel, ModelConfig, default_registry
cfg = ModelConfig(vocab_size=64, context_length=16, emb_dim=32, n_layers=2, n_heads=2, norm="scalenorm")
torch.manual_seed(0)
model = GPTModel(cfg)
idx = torch.randint(0, 64, (2, 8))
logits, loss = model(idx, idx)
norms = [model.final_norm] + [n for b in model.blocks for n in (b.norm1, b.norm2)]
print(json.dumps({
    "source": default_registry().get("norm", "scalenorm").source,
    "norms": sorted({f"{type(n).__module__}.{type(n).__name__}" for n in norms}),
    "params": cfg.norm.params,
    "shape": list(logits.shape),
    "loss": loss.item(),
}))

# Same process, entry points switched off: the name is gone.
import os
from pydantic import ValidationError
from gptkit import describe_validation_error, reset_default_registry
os.environ["GPTKIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
reset_default_registry()
try:
    ModelConfig(norm="scalenorm")
except ValidationError as err:
    print(json.dumps({"disabled": describe_validation_error(err, "model")}))
"""


def test_entry_point_plugin_component_is_selected_by_config_and_runs_unless_disabled(good_site: Path) -> None:
    result = run_python(["-c", SELECT_SCALENORM], good_site)
    assert result.returncode == 0, result.stderr
    out, disabled = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert out["source"] == "package myplug-dist (myplug)"
    assert out["norms"] == ["myplug_pkg.plugin.ScaleNorm"]  # every norm slot uses the plugin's class
    assert out["params"] == {"eps": 1e-5}
    assert out["shape"] == [2, 8, 64]
    assert math.isfinite(out["loss"])
    assert disabled["disabled"] == (
        "model.norm: unknown norm 'scalenorm' (did you mean 'layernorm'?); valid norm names: layernorm, rmsnorm"
    )


def test_entry_point_plugin_is_skipped_when_autoload_disabled(good_site: Path, monkeypatch: pytest.MonkeyPatch, on_sys_path) -> None:
    on_sys_path(good_site)
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    assert "scalenorm" in build_registry(plugin_dirs=[]).names("norm")  # found on sys.path ...
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    registry = build_registry(plugin_dirs=[])  # ... and skipped with the switch
    with pytest.raises(ValidationError) as err:
        ModelConfig.model_validate({"norm": "scalenorm"}, context={"registry": registry})
    assert describe_validation_error(err.value, "model") == (
        "model.norm: unknown norm 'scalenorm' (did you mean 'layernorm'?); valid norm names: layernorm"
    )


def test_components_command_lists_entry_point_plugin(good_site: Path) -> None:
    result = run_python(["main.py", "components"], good_site)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "scalenorm" in line]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].split("│") if cell.strip()]
    assert cells == ["norm", "scalenorm", "ScaleNorm: one scalar gain", "package myplug-dist (myplug)"]


def test_broken_entry_point_plugin_fails_the_command_naming_it(broken_site: Path) -> None:
    result = run_python(["main.py", "components"], broken_site)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        "error: plugin 'brokenplug' from brokenplug-dist (entry point brokenplug_pkg.plugin) failed to import: "
        "ImportError: needs libfancy, which is not installed; set GPTKIT_DISABLE_PLUGIN_AUTOLOAD=1 to skip "
        "entry-point plugins"
    ) in " ".join(result.stderr.split())


def test_broken_entry_point_plugin_is_skipped_when_autoload_disabled(broken_site: Path, monkeypatch: pytest.MonkeyPatch, on_sys_path) -> None:
    on_sys_path(broken_site)
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert build_registry(plugin_dirs=[]).names("norm") == ["layernorm"]


def test_broken_entry_point_plugin_raises_plugin_error(broken_site: Path, on_sys_path) -> None:
    on_sys_path(broken_site)
    with pytest.raises(PluginError) as err:
        build_registry(plugin_dirs=[], entry_points=True)
    assert str(err.value).startswith("plugin 'brokenplug' from brokenplug-dist (entry point brokenplug_pkg.plugin) failed to import: ImportError")
    assert isinstance(err.value.__cause__, ImportError)


def test_entry_point_plugin_loads_in_process_too(good_site: Path, on_sys_path) -> None:
    on_sys_path(good_site)
    registry = build_registry(plugin_dirs=[], entry_points=True)
    assert registry.get("norm", "scalenorm").source == "package myplug-dist (myplug)"
    assert "scalenorm" not in default_registry().names("norm")  # the process-wide registry was not touched


# --- the alternatives shipped in plugins/ ----------------------------------------------------


def test_rmsnorm_matches_formula_and_gradients() -> None:
    norm = default_registry().create("norm", {"name": "rmsnorm", "eps": 1e-6}, 16).to(DOUBLE)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, dtype=DOUBLE))
    x = (torch.randn(3, 5, 16, dtype=DOUBLE) * 2 + 1).requires_grad_()

    def formula(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + 1e-6) * w

    out = norm(x)
    torch.testing.assert_close(out, formula(x, norm.weight))
    g = torch.randn(out.shape, dtype=DOUBLE)
    got = torch.autograd.grad((out * g).sum(), [x, norm.weight])
    want = torch.autograd.grad((formula(x, norm.weight) * g).sum(), [x, norm.weight])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]  # scale only, no bias


def test_swiglu_matches_formula() -> None:
    cfg = ModelConfig(emb_dim=64, n_heads=4, vocab_size=32, context_length=8, ffn="swiglu")
    ffn = default_registry().create("ffn", cfg.ffn, cfg, activation=None).to(DOUBLE)
    assert ffn.gate.weight.shape == (192, 64)  # 8/3 * 64 = 170.7, rounded up to a multiple of 64
    assert ffn.gate.bias is None and ffn.up.bias is None and ffn.down.bias is None
    assert getattr(ffn.down, "is_residual_projection", False) is True
    x = torch.randn(2, 3, 64, dtype=DOUBLE)
    gate = x @ ffn.gate.weight.T
    expected = ((gate / (1 + torch.exp(-gate))) * (x @ ffn.up.weight.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected)


def test_swiglu_hidden_width_and_bias_from_config() -> None:
    cfg = ModelConfig(emb_dim=64, n_heads=4, vocab_size=32, context_length=8, ffn={"name": "swiglu", "hidden_dim": 100, "bias": True})
    ffn = default_registry().create("ffn", cfg.ffn, cfg, activation=None)
    assert ffn.up.weight.shape == (100, 64) and ffn.down.bias is not None


@pytest.mark.parametrize(("name", "formula"), [("relu", lambda x: x.clamp(min=0)), ("silu", lambda x: x / (1 + torch.exp(-x)))])
def test_activation_alternatives_match_formulas(name: str, formula) -> None:
    x = torch.linspace(-5, 5, 41, dtype=DOUBLE)
    torch.testing.assert_close(default_registry().create("activation", name)(x), formula(x))


def rope(head_dim: int = 8, context: int = 32, theta: float | None = None) -> nn.Module:
    n_heads = 2
    spec = "rope" if theta is None else {"name": "rope", "theta": theta}
    cfg = ModelConfig(emb_dim=head_dim * n_heads, n_heads=n_heads, context_length=context, vocab_size=16, position=spec)
    return default_registry().create("position", cfg.position, cfg)


def test_rope_matches_complex_rotation_formula() -> None:
    d, theta = 8, 10000.0
    pos = rope(d)
    q = torch.randn(1, 2, 6, d)
    rq, _ = pos.rotate(q, q.clone(), 3)
    for t in range(6):
        p = 3 + t
        for i in range(d // 2):
            angle = p * theta ** (-2 * i / d)
            z = complex(q[0, 0, t, i], q[0, 0, t, i + d // 2]) * complex(math.cos(angle), math.sin(angle))
            assert rq[0, 0, t, i].item() == pytest.approx(z.real, abs=1e-5)
            assert rq[0, 0, t, i + d // 2].item() == pytest.approx(z.imag, abs=1e-5)


def test_rope_theta_comes_from_config() -> None:
    pos = rope(8, theta=100.0)
    q = torch.zeros(1, 1, 3, 8)
    q[..., 1] = 1.0  # channel pair 1 turns at 100 ** (-2/8) per position
    rq, _ = pos.rotate(q, q, 0)
    angle = 2 * 100.0 ** (-2 / 8)
    assert rq[0, 0, 2, 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert rq[0, 0, 2, 5].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_rope_preserves_norms_and_leaves_position_zero_alone() -> None:
    pos = rope(8)
    q, k = torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    rq, rk = pos.rotate(q, k, 0)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rk.norm(dim=-1), k.norm(dim=-1))
    torch.testing.assert_close(rq[:, :, 0], q[:, :, 0])
    assert not torch.allclose(rq[:, :, 1:], q[:, :, 1:])


def test_rope_scores_depend_only_on_relative_offset() -> None:
    pos = rope(8)
    q_vec, k_vec = torch.randn(8, dtype=DOUBLE), torch.randn(8, dtype=DOUBLE)
    seq = 20
    rq, rk = pos.rotate(q_vec.float().expand(1, 1, seq, 8), k_vec.float().expand(1, 1, seq, 8), 0)

    def score(m: int, n: int) -> float:
        return float(rq[0, 0, m] @ rk[0, 0, n])

    for m, n in [(5, 2), (3, 3), (7, 0), (2, 6)]:
        for shift in (1, 4, 9):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4), (m, n, shift)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)  # a different offset gives a different score


def test_rope_rotation_with_start_pos_matches_full_sequence() -> None:
    pos = rope(8)
    q, k = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    full_q, full_k = pos.rotate(q, k, 0)
    part_q, part_k = pos.rotate(q[:, :, 4:7], k[:, :, 4:7], 4)
    torch.testing.assert_close(part_q, full_q[:, :, 4:7])
    torch.testing.assert_close(part_k, full_k[:, :, 4:7])


def test_rope_tables_are_not_saved_in_checkpoints() -> None:
    model = GPTModel(ModelConfig(vocab_size=16, context_length=8, emb_dim=16, n_heads=2, n_layers=1, position="rope"))
    assert not any(key.startswith("pos_emb.") for key in model.state_dict())


def test_rope_refuses_odd_head_size_when_built_directly() -> None:
    cls = type(rope(8))
    with pytest.raises(ValueError, match=re.escape("RoPE needs an even head size, got 3")):
        cls(3, 16)


def test_plugins_folder_components_have_descriptions_and_sources() -> None:
    registry = default_registry()
    shipped = {c.name: c for c in registry.list() if c.source.startswith("plugins/")}
    assert set(shipped) >= {"rmsnorm", "swiglu", "rope", "relu", "silu"}
    assert all(c.description for c in shipped.values())
