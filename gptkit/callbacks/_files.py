"""File helpers shared by the callbacks that write into the run directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a temporary file beside `path`, then move it over `path`.

    A reader (or a run killed halfway) sees the old file or the new one, never
    half of one. The temporary name is fixed per process rather than from
    `tempfile`, whose 0600 files would stay unreadable to anyone else.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
