"""What `pip install gptkit` puts in site-packages: the library and its assets, nothing generic."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_only_gptkit_with_assets(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("gptkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"gptkit"}
    for needed in ("gptkit/data/assets/gpt2.tiktoken", "gptkit/serving/web/index.html", "gptkit/serving/web/chat.js",
                   "gptkit/layers/attention.py", "gptkit/training/callbacks/console.py"):
        assert needed in names, needed
    # Every package directory of the source tree made it into the wheel.
    source_packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "gptkit").rglob("__init__.py")}
    assert source_packages <= {n.rsplit("/", 1)[0] for n in names}
