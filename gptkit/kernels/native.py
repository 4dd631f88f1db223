"""C kernels built on first use: compiled once per machine into gptkit's cache folder, loaded with ctypes.

`gemv` and `decode_attention` each carry a small C source with no PyTorch headers,
so it builds in about a second with the system's C compiler (`-O3 -march=native`:
AVX-512 where the CPU has it). Where there is no compiler, or the build fails,
`build` returns None and the caller keeps to PyTorch's kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptkit" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return ""


def _compile(compiler: str, flags: list[str], source: str, library: Path) -> bool:
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
            source_file = Path(tmp) / f"{library.stem}.c"
            source_file.write_text(source)
            built = Path(tmp) / library.name
            subprocess.run([compiler, *flags, str(source_file), "-o", str(built)], check=True, capture_output=True, timeout=120)
            os.replace(built, library)  # atomic: another process may be building the same file
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def build(name: str, source: str) -> ctypes.CDLL | None:
    """`source` compiled as `<cache>/<name>-<key>.so` (keyed by source, compiler, flags and CPU) and loaded, or None.

    With OpenMP where the compiler has it: the library then needs `libgomp.so.1`, the
    runtime PyTorch's own wheel loads under that name, so the dynamic loader hands it
    the one already in the process and the kernel's threads are PyTorch's threads.
    """
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        return None
    base = ["-O3", "-march=native", "-shared", "-fPIC"]
    for flags in ([*base, "-fopenmp"], base):
        key = hashlib.sha256("\n".join([source, compiler, *flags, platform.machine(), _cpu_flags()]).encode()).hexdigest()
        library = cache_dir() / f"{name}-{key[:16]}.so"
        if library.exists() or _compile(compiler, flags, source, library):
            break
    else:
        return None
    try:
        return ctypes.CDLL(str(library))
    except OSError:
        return None
