"""Where training text comes from: the default corpus, user sources, strict reading.

The default corpus is the Python standard library's own source code, because
every machine that can run gptkit already has it: no download, no licence
question, and the same files on every install of the same Python version.

A user source is a file, a directory, a glob pattern or an http(s) URL.
Reading is strict UTF-8 and streams in blocks, so a corpus larger than memory
can be read, and a binary or mis-encoded file stops the run with the exact byte
offset instead of quietly training on mojibake.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
import re
import shutil
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gptkit.atomic import replace_atomically
from gptkit.errors import DataError

# Suffixes that are plain text by convention. Directories are scanned only for
# these, so pointing gptkit at a project folder skips images, archives, .pyc
# and the like instead of failing on the first binary file. A file named
# explicitly (or matched by a glob) is read whatever its suffix.
TEXT_SUFFIXES: frozenset[str] = frozenset(
    {
        ".txt", ".text", ".md", ".markdown", ".rst", ".org", ".adoc", ".tex",
        ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java",
        ".js", ".ts", ".html", ".htm", ".css", ".xml", ".json", ".jsonl",
        ".yaml", ".yml", ".toml", ".ini", ".cfg", ".csv", ".tsv", ".sh",
    }
)

# Stdlib directories that are tests, the IDE, installed packages or build
# configuration. Tests are left out because they are full of deliberately odd
# code (bad encodings, syntax errors, huge generated literals). `encodings/`
# (charmap tables), `pydoc_data/` (an English help-text dump) and the HTML entity
# table are generated data, not Python: a small model spends its capacity on
# their hex tables, and a validation split that draws them reads a loss far above
# what the model does on code.
_STDLIB_EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "__pycache__", "encodings", "pydoc_data"}
)
_STDLIB_EXCLUDED_FILES: frozenset[str] = frozenset({"html/entities.py"})

READ_BLOCK_BYTES = 1 << 20
_GLOB_CHARS = re.compile(r"[*?\[]")


def stdlib_root() -> Path:
    """The directory holding the running Python's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def default_corpus_files() -> list[Path]:
    """The standard library's `.py` files minus tests and machine-specific files, sorted.

    `_sysconfigdata_*` and `config-*` describe how this particular interpreter
    was built; leaving them out keeps the corpus identical across installs.
    """
    root = stdlib_root()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in _STDLIB_EXCLUDED_DIRS and not d.startswith(("config-", "."))
        ]
        for name in filenames:
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                path = Path(dirpath, name)
                relative = path.relative_to(root).as_posix()
                if relative not in _STDLIB_EXCLUDED_FILES:
                    found.append((relative, path))
    # Sorted by relative path, not absolute, so the order is the same wherever
    # Python is installed.
    return [path for _, path in sorted(found)]


def relative_name(path: Path, root: Path) -> str:
    """`path` relative to `root` in POSIX form, or just its name if outside `root`."""
    # absolute(), not resolve(): resolving stats every path component, which
    # costs more than tokenizing small files.
    try:
        return path.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        return path.name


def split_files(
    files: Sequence[Path], val_fraction: float = 0.05, seed: int = 0, root: Path | None = None
) -> tuple[list[Path], list[Path]]:
    """Split files into (train, val) by a hash of each file's path relative to `root`.

    A hash instead of a shuffled list: adding or removing one file never moves
    any other file between splits, and the split is the same on every machine.
    With two or more files each side gets at least one when `val_fraction` > 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if root is None:
        root = Path(os.path.commonpath([str(Path(f).absolute().parent) for f in files])) if files else Path()
    scored = []
    for f in files:
        digest = hashlib.sha256(f"{seed}:{relative_name(Path(f), root)}".encode()).digest()
        scored.append((int.from_bytes(digest[:8], "big") / 2.0**64, Path(f)))
    val = {f for score, f in scored if score < val_fraction}
    if val_fraction > 0 and len(scored) >= 2:
        by_score = sorted(scored, key=lambda sf: sf[0])
        if not val:
            val.add(by_score[0][1])
        if len(val) == len(scored):
            val.discard(by_score[-1][1])
    train = [Path(f) for f in files if Path(f) not in val]
    return train, [Path(f) for f in files if Path(f) in val]


def default_cache_dir() -> Path:
    """`$GPTKIT_CACHE`, else `~/.cache/gptkit`."""
    return Path(os.environ.get("GPTKIT_CACHE", "~/.cache/gptkit")).expanduser()


def fetch_url(url: str, cache_dir: Path) -> Path:
    """Download `url` into `cache_dir` once; later calls return the cached file."""
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:64] or "download"
    target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{safe_name}"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)

    def download(tmp: Path) -> None:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, READ_BLOCK_BYTES)

    try:
        # Renamed into place only when complete, so an interrupted download is
        # never mistaken for the cached file next time.
        replace_atomically(target, download)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"could not download {url}: {reason}; expected a reachable http(s) URL") from exc
    return target


def _walk_text_files(directory: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        # Hidden directories are .git, .venv, caches: tooling, not text.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath, n) for n in filenames if not n.startswith(".") and Path(n).suffix.lower() in TEXT_SUFFIXES
        )
    return sorted(found)


def resolve_source(path: str, cache_dir: Path | None = None) -> list[Path]:
    """Expand a source (file, directory, glob or http(s) URL) into a sorted list of files.

    URLs are downloaded once into `cache_dir` (default `default_cache_dir()/downloads`).
    """
    if path.startswith(("http://", "https://")):
        return [fetch_url(path, cache_dir if cache_dir is not None else default_cache_dir() / "downloads")]
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = _walk_text_files(p)
        if not files:
            raise DataError(
                f"directory {p} contains no text files; expected files with one of the suffixes "
                f"{', '.join(sorted(TEXT_SUFFIXES))}"
            )
        return files
    if _GLOB_CHARS.search(path):
        matches: list[Path] = []
        for m in sorted(glob.glob(str(p), recursive=True)):
            mp = Path(m)
            matches.extend([mp] if mp.is_file() else _walk_text_files(mp) if mp.is_dir() else [])
        if not matches:
            raise DataError(f"glob pattern '{path}' matches no files; expected at least one text file")
        return sorted(set(matches))
    raise DataError(f"data source '{path}' does not exist; expected a text file, directory, glob or http(s) URL")


@dataclass(frozen=True)
class FileInfo:
    """A checked source file: its size and the SHA-256 of its bytes."""

    path: Path
    size: int
    sha256: str


def _binary_error(path: Path, at: int) -> DataError:
    return DataError(f"file {path} looks binary: NUL byte at byte offset {at}; expected UTF-8 text")


def _encoding_error(path: Path, at: int, bad: bytes) -> DataError:
    return DataError(f"file {path} is not valid UTF-8: byte 0x{bad.hex()} at byte offset {at}; expected UTF-8 text")


def _read_error(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot read {path}: {exc.strerror}; expected a readable text file")


def _decoded_blocks(path: Path) -> Iterator[tuple[bytes, str]]:
    """Yield (raw bytes, text) blocks of a file, rejecting NUL bytes and invalid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(READ_BLOCK_BYTES)
                nul = raw.find(b"\x00")
                if nul >= 0:
                    raise _binary_error(path, offset + nul)
                pending = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    # The decoder re-reads bytes held back from the last block,
                    # so the error offset counts from where those began.
                    raise _encoding_error(path, offset - pending + exc.start, exc.object[exc.start : exc.start + 1]) from None
                if offset == 0 and text.startswith("\ufeff"):
                    text = text[1:]  # a byte-order mark is not part of the text
                if not raw:
                    return
                offset += len(raw)
                yield raw, text
    except OSError as exc:
        raise _read_error(path, exc) from exc


def scan_file(path: Path) -> FileInfo:
    """Check that `path` is UTF-8 text and hash its bytes, reading in blocks."""
    h = hashlib.sha256()
    size = 0
    for raw, _ in _decoded_blocks(path):
        h.update(raw)
        size += len(raw)
    return FileInfo(Path(path), size, h.hexdigest())


def read_text(path: Path) -> str:
    """The whole file as strict UTF-8 text (for small files; use `iter_file_pieces` for big ones)."""
    return "".join(text for _, text in _decoded_blocks(path))


def _last_safe_cut(text: str, lo: int, hi: int) -> int:
    """The last index in (lo, hi) of a space that follows a non-space character, or -1.

    The GPT-2 pre-tokenizer regex (and the later cl100k/o200k ones) never puts
    a non-space character and a following space in one pre-token, and BPE
    never merges across pre-tokens, so cutting there changes no token.
    """
    i = text.rfind(" ", lo + 1, hi)
    while i > lo:
        if not text[i - 1].isspace():
            return i
        i = text.rfind(" ", lo + 1, i)
    return -1


def iter_pieces(path: Path, max_chars: int) -> Iterator[str]:
    """Yield a file's text in pieces of at most `max_chars` characters.

    Pieces end just before a space (see `_last_safe_cut`), so tokenizing them
    one by one gives the tokens of the whole file. Only where the second half
    of a piece has no space at all (long runs of CJK text, minified or encoded
    data) is the text cut hard, which can change the tokens around that cut.
    """
    buf = ""
    for _, text in _decoded_blocks(path):
        buf += text
        while len(buf) > max_chars:
            cut = _last_safe_cut(buf, max_chars // 2, max_chars)
            if cut < 0:
                cut = max_chars
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf


# --- pieces with byte offsets, for streaming huge files --------------------------------------

# A newline between two printable ASCII characters. GPT-2's pre-tokenizer
# regex ends a pre-token there on both sides: "\n" after a non-space is a
# pre-token of its own (`\s+`) and no pattern starts with a newline and goes
# on into a word. Cut right after that newline, each half pre-tokenizes as the
# whole text did around it, and BPE never merges across pre-tokens, so the
# tokens do not change. (cl100k/o200k agree: their `\s*[\r\n]+` and
# punctuation-then-newlines patterns also stop before a non-space.) Newlines
# next to other whitespace are no seam: "\n\n\n" and "\n    " are pre-tokens
# whose split depends on what follows them.
_NEWLINE_SEAM = re.compile(rb"[\x21-\x7e]\n(?=[\x21-\x7e])")
# Fallback: just before a space that follows a printable ASCII character
# (the rule of `_last_safe_cut`, restricted to ASCII so bytes can be tested).
_SPACE_SEAM = re.compile(rb"[\x21-\x7e](?= )")
_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class Piece:
    """Part of a file's text; `end` is the byte offset just past it, `last` marks the file's final piece."""

    text: str
    end: int
    last: bool


def _last_match_end(pattern: re.Pattern[bytes], buf: bytes, lo: int, hi: int) -> int:
    """End of the last match of `pattern` within buf[lo:hi + 1] that ends after lo and at most at hi, or -1."""
    end = -1
    for m in pattern.finditer(buf, lo, hi + 1):
        if lo < m.end() <= hi:
            end = m.end()
    return end


def _cut(buf: bytes, max_bytes: int) -> int:
    """Where to end a piece of `buf` (longer than `max_bytes`): a seam in its second half if there is one."""
    lo = max_bytes // 2
    cut = _last_match_end(_NEWLINE_SEAM, buf, lo, max_bytes)
    if cut < 0:
        cut = _last_match_end(_SPACE_SEAM, buf, lo, max_bytes)
    if cut < 0:
        # No seam at all (one enormous line of CJK text or minified data):
        # cut hard, but between characters, never inside one. The few tokens
        # beside this cut may differ from tokenizing the file whole.
        cut = max_bytes
        while cut > 1 and buf[cut] & 0xC0 == 0x80:
            cut -= 1
    return cut


def iter_file_pieces(path: Path, max_bytes: int, start: int = 0) -> Iterator[Piece]:
    """Yield the strict UTF-8 text of `path` from byte `start` on, in pieces of at most `max_bytes` bytes.

    Pieces end at a newline seam (see `_NEWLINE_SEAM`), else before a space,
    so tokenizing them one by one gives the tokens of the whole file; only a
    stretch of `max_bytes // 2` bytes without either is cut hard. At most
    about `2 * max_bytes` bytes are held at once, however long the file or
    its lines. The pieces from `start` depend only on the bytes from there
    on, so resuming at any earlier piece's `end` yields exactly the pieces a
    single pass would have. A byte-order mark at offset 0 is skipped.
    """
    if max_bytes < 2:
        raise ValueError(f"max_bytes must be at least 2, got {max_bytes}")
    try:
        with open(path, "rb") as f:
            f.seek(start)
            offset = start  # file offset of buf[0]
            buf = b""
            eof = False
            while True:
                while not eof and len(buf) <= max_bytes:
                    block = f.read(max(max_bytes + 1 - len(buf), 1 << 16))
                    eof = not block
                    buf += block
                if offset == 0 and buf.startswith(_BOM):
                    buf, offset = buf[len(_BOM) :], len(_BOM)
                if not buf:
                    return
                cut = _cut(buf, max_bytes) if len(buf) > max_bytes else len(buf)
                raw, buf = buf[:cut], buf[cut:]
                nul = raw.find(b"\x00")
                if nul >= 0:
                    raise _binary_error(path, offset + nul)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _encoding_error(path, offset + exc.start, raw[exc.start : exc.start + 1]) from None
                offset += cut
                yield Piece(text, offset, eof and not buf)
    except OSError as exc:
        raise _read_error(path, exc) from exc
