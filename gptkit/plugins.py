"""Finding plugins and filling the registry from them.

Load order, which is also the order of precedence for `override=True`:
gptkit's own built-in plugins, then every file in the plugin folders, then the
modules named by installed distributions under the ``gptkit`` entry-point group.
Everything is loaded before the first lookup, because a name that is missing
only because its module was never imported is the most common registry
complaint (timm's "Unknown model").

Environment:
- ``GPTKIT_PLUGIN_DIRS``: extra plugin folders, separated by ``os.pathsep``.
- ``GPTKIT_DISABLE_PLUGIN_AUTOLOAD=1``: skip entry points (as pytest's
  ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), for a clean room or a broken package.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pluggy

from gptkit import hookspecs
from gptkit.errors import GptkitError, PluginError
from gptkit.registry import Registry

ENTRY_POINT_GROUP = "gptkit"
# gptkit's own components, each registered in the file that defines it, through the
# same hook as a third-party plugin's.
BUILTIN_PLUGINS = (
    "gptkit.layers.layer_norm",
    "gptkit.layers.gelu",
    "gptkit.layers.attention",
    "gptkit.layers.feed_forward",
    "gptkit.layers.embeddings",
    "gptkit.layers.block",
    "gptkit.layers.heads",
    "gptkit.training.schedulers",
    "gptkit.training.optimizers",
    "gptkit.generation.samplers",
    "gptkit.data.tokenizer",
    "gptkit.data.char_tokenizer",
    "gptkit.data.bpe_tokenizer",
    "gptkit.data.prompt_styles",
    "gptkit.training.callbacks.checkpoint",
    "gptkit.training.callbacks.console",
    "gptkit.training.callbacks.metrics",
    "gptkit.training.callbacks.loss_plot",
    "gptkit.training.callbacks.samples",
    "gptkit.training.callbacks.early_stopping",
    "gptkit.training.callbacks.evaluate",
    "gptkit.training.callbacks.csv_logger",
    "gptkit.training.callbacks.tensorboard",
    "gptkit.training.callbacks.wandb_logger",
)
DISABLE_AUTOLOAD_ENV = "GPTKIT_DISABLE_PLUGIN_AUTOLOAD"
PLUGIN_DIRS_ENV = "GPTKIT_PLUGIN_DIRS"
FILE_PLUGIN_PACKAGE = "gptkit_plugins"
HOOK_PREFIX = f"{hookspecs.PROJECT}_"


def checkout_plugin_dir() -> Path | None:
    """`plugins/` of a source checkout, when gptkit runs from one.

    An installed gptkit has no such folder beside it; the check for `main.py`
    keeps an unrelated `plugins/` in site-packages from being imported.
    """
    root = Path(__file__).resolve().parent.parent
    folder = root / "plugins"
    return folder if folder.is_dir() and (root / "main.py").is_file() else None


def default_plugin_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(PLUGIN_DIRS_ENV, "").split(os.pathsep) if p]
    checkout = checkout_plugin_dir()
    if checkout is not None and checkout not in dirs:
        dirs.insert(0, checkout)
    return dirs


def file_plugin_package() -> ModuleType:
    """The (empty) parent of file plugins' modules, so `import gptkit_plugins.NAME` resolves.

    Without it, pickle cannot find a class defined in a plugin file: it imports the
    top-level package of the class's module first.
    """
    package = sys.modules.get(FILE_PLUGIN_PACKAGE)
    if package is None:
        package = ModuleType(FILE_PLUGIN_PACKAGE, "Modules loaded from gptkit plugin folders.")
        package.__path__ = []  # a package, but nothing is ever found on disk through it
        sys.modules[FILE_PLUGIN_PACKAGE] = package
    return package


def load_file_plugin(path: Path) -> ModuleType:
    module_name = f"{FILE_PLUGIN_PACKAGE}.{path.stem}"
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    package = file_plugin_package()
    # Registered before exec so dataclasses and pickling inside the plugin can find it.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise PluginError(f"plugin file {path} failed to import: {type(err).__name__}: {err}") from err
    setattr(package, path.stem, module)
    return module


def load_entry_point_plugins() -> list[tuple[str, object]]:
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "an installed package"
        try:
            loaded.append((f"package {dist} ({ep.name})", ep.load()))
        except Exception as err:
            raise PluginError(
                f"plugin '{ep.name}' from {dist} (entry point {ep.value}) failed to import: "
                f"{type(err).__name__}: {err}; set {DISABLE_AUTOLOAD_ENV}=1 to skip entry-point plugins"
            ) from err
    return loaded


def collect_plugins(plugin_dirs: Iterable[Path], entry_points: bool) -> list[tuple[str, object]]:
    """(label, plugin object) in load order; the label says where it came from."""
    plugins: list[tuple[str, object]] = [("built-in", importlib.import_module(m)) for m in BUILTIN_PLUGINS]
    for folder in plugin_dirs:
        if not folder.is_dir():
            raise PluginError(f"plugin folder {folder} does not exist")
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                # resolve(): a folder given as "." still has a name to show
                plugins.append((f"{folder.resolve().name}/{path.name}", load_file_plugin(path)))
    if entry_points:
        plugins.extend(load_entry_point_plugins())
    return plugins


def check_hook_names(manager: pluggy.PluginManager, plugin: object, label: str) -> None:
    """Refuse a `gptkit_*` function that is not a known, marked hook.

    pluggy keeps a marked function with an unknown name aside unverified (it is
    never called) and skips an unmarked one altogether, so either mistake would
    silently leave the plugin's components unregistered.
    """
    specs = sorted(
        name for name, caller in vars(manager.hook).items() if not name.startswith("_") and caller.has_spec()
    )
    unknown = [
        name
        for name, caller in vars(manager.hook).items()
        if not name.startswith("_")
        and not caller.has_spec()
        and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
    ]
    for attr in dir(plugin):
        value = getattr(plugin, attr, None)
        if (
            not attr.startswith(HOOK_PREFIX)
            or not inspect.isroutine(value)
            or manager.parse_hookimpl_opts(plugin, attr) is not None
            or getattr(value, f"{hookspecs.PROJECT}_spec", None) is not None  # the spec itself, imported
        ):
            continue
        if attr in specs:
            raise PluginError(
                f"plugin {label} defines {attr} without @gptkit.hookimpl, so it would never be called"
            )
        unknown.append(attr)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, specs, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PluginError(f"plugin {label} implements unknown hook '{name}'{hint}; gptkit hooks: {', '.join(specs)}")


def build_registry(
    plugin_dirs: Iterable[Path] | None = None,
    entry_points: bool | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
) -> Registry:
    """A fresh registry filled by every plugin found."""
    dirs = default_plugin_dirs() if plugin_dirs is None else list(plugin_dirs)
    if entry_points is None:
        entry_points = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    for label, plugin in [*collect_plugins(dirs, entry_points), *extra_plugins]:
        if manager.is_registered(plugin):
            continue  # the same module reached twice (e.g. a folder also named in the env)
        # Two different plugins may share a label (same file name in two folders named
        # alike); pluggy needs unique names, and neither may be dropped silently.
        unique, n = label, 1
        while manager.has_plugin(unique):
            n += 1
            unique = f"{label} #{n}"
        try:
            manager.register(plugin, name=unique)
        except pluggy.PluginValidationError as err:
            raise PluginError(f"plugin {label} is invalid: {err}") from err
        check_hook_names(manager, plugin, label)
        # Each plugin's hook is called on its own so its registrations are attributed
        # to it and a failure names it; pluggy still validated the hook's signature.
        for impl in manager.hook.gptkit_register_components.get_hookimpls():
            if impl.plugin is plugin:
                with registry.source(label):
                    try:
                        impl.function(registry=registry)
                    except GptkitError:
                        raise
                    except Exception as err:
                        raise PluginError(
                            f"plugin {label} failed while registering components: {type(err).__name__}: {err}"
                        ) from err
    return registry


_default: Registry | None = None
_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = build_registry()
        return _default


def reset_default_registry() -> None:
    """Forget the process-wide registry (after changing plugin folders or the environment)."""
    global _default
    with _lock:
        _default = None
