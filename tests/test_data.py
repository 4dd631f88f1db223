"""Tests for gptkit.data.corpus and gptkit.data.dataset: text sources, token files on disk, batches.

Most tests use `ByteTokenizer` (token id = UTF-8 byte, EOT = 256), so the
expected token file is simply the source bytes with 256 after each document,
an independent fact to check the .bin files against. A few tests use the real
GPT-2 tokenizer.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from conftest import EOT, REPO_ROOT, ByteTokenizer, subprocess_env

from gptkit.data.batches import BatchSampler, fixed_batches
from gptkit.data.corpus import (
    READ_BLOCK_BYTES,
    default_corpus_files,
    iter_pieces,
    read_text,
    resolve_source,
    scan_file,
    split_files,
    stdlib_root,
)
from gptkit.data.dataset import prepare_dataset
from gptkit.data.shards import TokenFile
from gptkit.errors import DataError

if TYPE_CHECKING:
    from gptkit.data.tokenizer import Tokenizer

def expected_tokens(*docs: bytes) -> np.ndarray:
    """What ByteTokenizer should write for these documents, in order."""
    out: list[int] = []
    for doc in docs:
        if doc:
            out.extend(doc)
            out.append(EOT)
    return np.array(out, dtype=np.uint16)


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def make_tree(root: Path, n: int = 12) -> list[Path]:
    return [write(root / f"dir{i % 3}" / f"doc{i:02d}.txt", f"document {i}\n" + "word " * (i + 3)) for i in range(n)]


def token_file(tmp_path: Path, tokens: np.ndarray, name: str = "tokens.bin") -> TokenFile:
    path = tmp_path / name
    tokens.astype(np.uint16).tofile(path)
    return TokenFile(path, len(tokens))


@pytest.fixture
def real_tokenizer() -> Tokenizer:
    module = pytest.importorskip("gptkit.data.tokenizer")
    return module.Tokenizer()


# --- the default corpus ---------------------------------------------------------------


def test_default_corpus_is_the_stdlib_without_tests_in_a_stable_order() -> None:
    files = default_corpus_files()
    root = stdlib_root()
    assert files == default_corpus_files()
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel)
    assert {"os.py", "json/__init__.py", "asyncio/events.py"} <= set(rel)
    assert all(f.suffix == ".py" and f.is_file() for f in files)
    banned = {"site-packages", "test", "tests", "idlelib", "idle_test", "__pycache__"}
    assert not any(banned & set(f.relative_to(root).parts) for f in files)
    assert not any(r.startswith("_sysconfigdata") for r in rel)
    total = sum(f.stat().st_size for f in files)
    assert 3e6 < total < 100e6, total
    for f in files:  # the whole default corpus must pass the strict reader
        scan_file(f)


# --- splitting by file -------------------------------------------------------------------


def test_split_by_file_is_deterministic_disjoint_and_stable(tmp_path: Path) -> None:
    files = [tmp_path / f"pkg{i % 7}" / f"mod{i}.py" for i in range(1000)]
    train, val = split_files(files, 0.05, seed=0, root=tmp_path)
    assert (train, val) == split_files(list(files), 0.05, seed=0, root=tmp_path)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(files)
    assert 20 <= len(val) <= 80  # 5% of 1000, give or take the hash
    # Membership depends on a file's own relative path only: dropping other
    # files or moving the whole tree moves nothing between splits.
    _, val_half = split_files(files[::2], 0.05, seed=0, root=tmp_path)
    assert set(val_half) == set(val) & set(files[::2])
    moved = [Path("/elsewhere") / f.relative_to(tmp_path) for f in files]
    _, val_moved = split_files(moved, 0.05, seed=0, root=Path("/elsewhere"))
    assert [f.relative_to("/elsewhere") for f in val_moved] == [f.relative_to(tmp_path) for f in val]
    assert split_files(files, 0.05, seed=1, root=tmp_path)[1] != val


def test_split_gives_each_side_a_file_and_rejects_bad_fractions(tmp_path: Path) -> None:
    train, val = split_files([tmp_path / "a.txt", tmp_path / "b.txt"], 0.01, root=tmp_path)
    assert len(train) == len(val) == 1
    assert split_files([tmp_path / "a.txt", tmp_path / "b.txt"], 0.0, root=tmp_path)[1] == []
    with pytest.raises(DataError, match="val_fraction"):
        split_files([tmp_path / "a.txt"], 1.0)


# --- resolving sources --------------------------------------------------------------------


def test_resolve_file_directory_and_glob(tmp_path: Path) -> None:
    docs = make_tree(tmp_path / "corpus")
    write(tmp_path / "corpus" / "image.png", b"\x89PNG\x00\x00")
    write(tmp_path / "corpus" / ".git" / "notes.txt", "hidden")
    write(tmp_path / "corpus" / "readme.MD", "# title\n")
    assert resolve_source(str(docs[0])) == [docs[0]]
    found = resolve_source(str(tmp_path / "corpus"))
    assert found == sorted(docs + [tmp_path / "corpus" / "readme.MD"])
    in_dir1 = sorted(d for d in docs if d.parent.name == "dir1")
    assert resolve_source(str(tmp_path / "corpus" / "dir1" / "*.txt")) == in_dir1
    assert resolve_source(str(tmp_path / "corpus" / "**" / "doc0*.txt")) == sorted(d for d in docs if d.name < "doc10")


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "contains no text files"),
        (lambda p: write(p / "bin" / "a.png", b"x").parent, "contains no text files"),
        (lambda p: p / "*.nothing", "matches no files"),
    ],
    ids=["missing-path", "empty-dir", "dir-without-text-files", "glob-without-match"],
)
def test_resolve_errors_name_the_path(tmp_path: Path, make: Callable[[Path], Path], pattern: str) -> None:
    path = str(make(tmp_path))
    with pytest.raises(DataError, match=pattern) as info:
        resolve_source(path)
    assert path in str(info.value)


# --- strict reading ------------------------------------------------------------------------


def test_binary_file_is_rejected_with_offset(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", b"hello\x00world")
    with pytest.raises(DataError, match=r"NUL byte at byte offset 5") as info:
        scan_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("offset", [3, READ_BLOCK_BYTES - 1, READ_BLOCK_BYTES + 7])
def test_invalid_utf8_is_rejected_with_offset(tmp_path: Path, offset: int) -> None:
    data = bytearray(b"a" * (offset + 10))
    data[offset] = 0xFF
    path = write(tmp_path / "latin.txt", bytes(data))
    with pytest.raises(DataError, match=rf"0xff at byte offset {offset}\b") as info:
        read_text(path)
    assert str(path) in str(info.value)


def test_truncated_utf8_at_end_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.txt", "abc€".encode()[:-1])
    with pytest.raises(DataError, match="byte offset 3"):
        scan_file(path)


def test_multibyte_characters_across_read_blocks_are_fine(tmp_path: Path) -> None:
    text = "x" * (READ_BLOCK_BYTES - 1) + "€日本" + "\ufeff" + "end"
    path = write(tmp_path / "u.txt", "\ufeff" + text)  # leading BOM dropped, later one kept
    assert read_text(path) == text
    info = scan_file(path)
    assert info.size == path.stat().st_size


def test_pieces_rejoin_to_the_text_and_respect_the_limit(tmp_path: Path) -> None:
    text = "".join(f"line {i}:  indented  words\n\tand tabs\n" for i in range(500)) + "日本語" * 300
    path = write(tmp_path / "t.txt", text)
    pieces = list(iter_pieces(path, 100))
    assert "".join(pieces) == text
    assert all(0 < len(p) <= 100 for p in pieces)
    # Away from the space-free tail, every cut is just before a space that follows a non-space.
    for piece, nxt in zip(pieces, pieces[1:]):
        if " " in nxt:
            assert nxt[0] == " " and not piece[-1].isspace()


def test_pieces_tokenize_like_the_whole_text(tmp_path: Path, real_tokenizer: Tokenizer) -> None:
    text = "".join(
        f"def f{i}(x):\n    return x  +  {i} # it's {i}'s\n\n\r\n  Ünïcödé 東京 text…  \n" for i in range(300)
    )
    path = write(tmp_path / "t.py", text)
    pieces = list(iter_pieces(path, 97))
    assert len(pieces) > 50
    joined = [t for ids in real_tokenizer.encode_batch(pieces) for t in ids]
    assert joined == real_tokenizer.encode(text)


# --- prepare_dataset -----------------------------------------------------------------------


def test_token_files_hold_each_document_then_eot(tmp_path: Path) -> None:
    docs = make_tree(tmp_path / "corpus", n=40)
    tok = ByteTokenizer()
    data = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache", val_fraction=0.2)
    train_files, val_files = split_files(docs, 0.2, root=tmp_path / "corpus")
    assert train_files and val_files
    for split, files in ((data.train, train_files), (data.val, val_files)):
        on_disk = np.fromfile(split.path, dtype=np.uint16)
        np.testing.assert_array_equal(on_disk, expected_tokens(*(f.read_bytes() for f in sorted(files))))
        assert split.n_tokens == len(on_disk) == len(split)
        np.testing.assert_array_equal(split.tokens, on_disk)
    manifest = json.loads(data.manifest_path.read_text())
    assert manifest["tokenizer"] == "bytes" and manifest["vocab_size"] == 257 and manifest["dtype"] == "uint16"
    assert manifest["train"]["tokens"] == data.train.n_tokens
    assert manifest["val"]["sources"] == [f.relative_to(tmp_path / "corpus").as_posix() for f in sorted(val_files)]
    assert not set(manifest["train"]["sources"]) & set(manifest["val"]["sources"])
    stats = data.stats
    total = sum(f.stat().st_size for f in docs)
    assert stats.text_bytes == total and stats.n_files == 40 and not stats.cached
    assert stats.tokens == total + 40 and stats.mb_per_s > 0 and stats.text_mb == total / 1e6


def test_single_file_is_split_by_position(tmp_path: Path) -> None:
    body = ("the quick brown fox jumps over the lazy dog\n" * 500).encode()
    src = write(tmp_path / "one.txt", body)
    data = prepare_dataset(str(src), ByteTokenizer(), tmp_path / "cache", val_fraction=0.1)
    everything = expected_tokens(body)
    n_val = round(len(everything) * 0.1)
    np.testing.assert_array_equal(np.fromfile(data.train.path, dtype=np.uint16), everything[:-n_val])
    np.testing.assert_array_equal(np.fromfile(data.val.path, dtype=np.uint16), everything[-n_val:])
    assert json.loads(data.manifest_path.read_text())["split"] == "position"


def test_large_single_file_streams_in_pieces(tmp_path: Path) -> None:
    body = "".join(f"row {i} of a long file\n" for i in range(60_000)).encode()
    src = write(tmp_path / "big.txt", body)
    tok = ByteTokenizer()
    seen: list[tuple[int, int]] = []
    data = prepare_dataset(
        str(src), tok, tmp_path / "cache", val_fraction=0.0, progress=lambda d, t: seen.append((d, t)), chunk_bytes=64 << 10
    )
    np.testing.assert_array_equal(np.fromfile(data.train.path, dtype=np.uint16), expected_tokens(body))
    assert data.val.n_tokens == 0 and len(data.val.tokens) == 0
    assert tok.calls > 10  # many batches, not one read of the whole file
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (len(body), len(body)) and {t for _, t in seen} == {len(body)}


def test_real_tokenizer_on_disk(tmp_path: Path, real_tokenizer: Tokenizer) -> None:
    texts = {
        "a.md": "# Title\n\nSome *markdown* text, café.\n",
        "b.py": "def f(x):\n    return x + 1\n",
        "c.txt": "東京 <|endoftext|> plain",  # special-looking text is ordinary text here
    }
    for name, text in texts.items():
        write(tmp_path / "src" / name, text)
    data = prepare_dataset(str(tmp_path / "src"), real_tokenizer, tmp_path / "cache", val_fraction=0.0)
    expected = [t for name in sorted(texts) for t in real_tokenizer.encode(texts[name]) + [real_tokenizer.eot_id]]
    assert np.fromfile(data.train.path, dtype=np.uint16).tolist() == expected


def test_second_call_hits_the_cache_and_changes_miss(tmp_path: Path) -> None:
    docs = make_tree(tmp_path / "corpus")
    tok = ByteTokenizer()
    first = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    calls = tok.calls
    assert calls > 0
    again = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    assert tok.calls == calls and again.stats.cached
    assert (again.train, again.val) == (first.train, first.val)
    # Same size and mtime, different bytes: only a content hash notices.
    stat = docs[3].stat()
    write(docs[3], docs[3].read_bytes().replace(b"word", b"WORD"))
    os.utime(docs[3], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    assert tok.calls > calls and not changed.stats.cached
    assert changed.train.path.parent != first.train.path.parent
    calls = tok.calls
    prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache", val_fraction=0.3)
    assert tok.calls > calls


def test_other_tokenizer_gets_its_own_cache(tmp_path: Path) -> None:
    make_tree(tmp_path / "corpus")
    first = prepare_dataset(str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "cache")

    class Renamed(ByteTokenizer):
        name = "bytes-v2"

    tok = Renamed()
    second = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    assert tok.calls > 0 and second.train.path != first.train.path


def test_interrupted_run_leaves_nothing_that_looks_finished(tmp_path: Path) -> None:
    make_tree(tmp_path / "corpus", n=30)

    class Dies(ByteTokenizer):
        def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
            if self.calls >= 2:
                raise KeyboardInterrupt
            return super().encode_batch(texts, num_threads)

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(str(tmp_path / "corpus"), Dies(), tmp_path / "cache", chunk_bytes=64)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []
    tok = ByteTokenizer()
    data = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache", chunk_bytes=64)
    assert tok.calls > 0 and data.train.n_tokens > 0


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    make_tree(tmp_path / "corpus")
    tok = ByteTokenizer()
    data = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    good = data.train.path.read_bytes()
    with open(data.train.path, "r+b") as f:
        f.truncate(len(good) // 2)
    calls = tok.calls
    rebuilt = prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    assert tok.calls > calls and rebuilt.train.path.read_bytes() == good
    data.manifest_path.write_text("{not json")
    calls = tok.calls
    prepare_dataset(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    assert tok.calls > calls


@pytest.mark.parametrize(
    "setup",
    [
        lambda p: write(p / "empty.txt", b""),
        lambda p: (write(p / "d" / "a.txt", b""), write(p / "d" / "b.md", b""))[0].parent,
        lambda p: write(p / "bom.txt", b"\xef\xbb\xbf"),
    ],
    ids=["empty-file", "dir-of-empty-files", "only-a-bom"],
)
def test_empty_corpus_is_an_error(tmp_path: Path, setup: Callable[[Path], Path]) -> None:
    src = str(setup(tmp_path))
    with pytest.raises(DataError, match="contains no text") as info:
        prepare_dataset(src, ByteTokenizer(), tmp_path / "cache")
    assert src in str(info.value)


def test_bad_files_and_settings_stop_prepare(tmp_path: Path) -> None:
    write(tmp_path / "d" / "good.txt", "fine\n")
    write(tmp_path / "d" / "bad.txt", b"ok\x00")
    with pytest.raises(DataError, match=r"bad\.txt.*offset 2"):
        prepare_dataset(str(tmp_path / "d"), ByteTokenizer(), tmp_path / "cache")
    with pytest.raises(DataError, match="val_fraction"):
        prepare_dataset(str(tmp_path / "d" / "good.txt"), ByteTokenizer(), tmp_path / "cache", val_fraction=1.5)

    class Huge(ByteTokenizer):
        vocab_size = 100_000

    with pytest.raises(DataError, match="uint16"):
        prepare_dataset(str(tmp_path / "d" / "good.txt"), Huge(), tmp_path / "cache")


# --- URL sources -----------------------------------------------------------------------------


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 with one text file at /corpus.txt; yields (base URL, request paths)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    requests: list[str] = []
    body = ("served over http, line by line\n" * 200).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path != "/corpus.txt":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_is_downloaded_once_and_cached(tmp_path: Path, http_server: tuple[str, list[str]]) -> None:
    base, requests = http_server
    tok = ByteTokenizer()
    data = prepare_dataset(f"{base}/corpus.txt", tok, tmp_path / "cache", val_fraction=0.0)
    assert requests == ["/corpus.txt"]
    expected = expected_tokens(("served over http, line by line\n" * 200).encode())
    np.testing.assert_array_equal(np.fromfile(data.train.path, dtype=np.uint16), expected)
    again = prepare_dataset(f"{base}/corpus.txt", tok, tmp_path / "cache", val_fraction=0.0)
    assert requests == ["/corpus.txt"] and again.stats.cached
    downloads = list((tmp_path / "cache" / "downloads").iterdir())
    assert len(downloads) == 1 and downloads[0].name.endswith("corpus.txt")


def test_failed_download_is_an_error_and_leaves_no_file(tmp_path: Path, http_server: tuple[str, list[str]]) -> None:
    base, _ = http_server
    with pytest.raises(DataError, match="could not download") as info:
        resolve_source(f"{base}/missing.txt", cache_dir=tmp_path / "dl")
    assert f"{base}/missing.txt" in str(info.value)
    assert list((tmp_path / "dl").iterdir()) == []


# --- memory ----------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from gptkit.data.dataset import prepare_dataset

    class FastBytes:
        # Bytes as ids via numpy, so the test measures gptkit's buffering, not a slow fake.
        name, vocab_size, eot_id = "fast-bytes", 257, 256
        def encode_batch(self, texts, num_threads=2):
            return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = prepare_dataset(sys.argv[1], FastBytes(), Path(sys.argv[2]), val_fraction=0.01)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kb": after - before, "tokens": data.stats.tokens}))
    """
)


def test_memory_stays_flat_for_a_big_file(tmp_path: Path) -> None:
    line_block = "".join(f"{i} lorem ipsum dolor sit amet, {i * 7919 % 1000} élan\n" for i in range(20_000)).encode()
    src = tmp_path / "big.txt"
    with open(src, "wb") as f:
        while f.tell() < 200_000_000:
            f.write(line_block)
    size = src.stat().st_size
    try:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(src), str(tmp_path / "cache")],
            cwd=REPO_ROOT,
            env=subprocess_env(PYTHONPATH=str(REPO_ROOT)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:  # 600 MB of text and tokens; pytest would keep them around
        src.unlink()
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tokens"] == size + 1
    # ru_maxrss is in KiB on Linux; the file is ~200 MB, growth must stay a small fraction.
    assert result["grew_kb"] * 1024 < size / 5, result


# --- batches ---------------------------------------------------------------------------------


def test_batches_are_shifted_windows_of_the_token_file(tmp_path: Path) -> None:
    tokens = np.arange(1000, dtype=np.uint16) * 7 % 50_000
    tf = token_file(tmp_path, tokens)
    sampler = BatchSampler(tf, batch_size=6, context_length=32, seed=1)
    x, y = sampler.batch(step=3)
    assert x.shape == y.shape == (6, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y, start in zip(x, y, sampler.offsets(3)):
        assert row_x.tolist() == tokens[start : start + 32].tolist()
        assert row_y.tolist() == tokens[start + 1 : start + 33].tolist()


def test_batches_depend_only_on_seed_step_micro_step_rank(tmp_path: Path) -> None:
    tf = token_file(tmp_path, np.random.default_rng(0).integers(0, 50_000, 10_000))
    a = BatchSampler(tf, 4, 16, seed=123, world_size=4)
    b = BatchSampler(TokenFile(tf.path, tf.n_tokens), 4, 16, seed=123, world_size=4)
    for step in range(5):  # a resumed sampler, asked for step 7 first, sees what the first saw
        a.batch(step)
    assert all(torch.equal(u, v) for u, v in zip(a.batch(7, 1, 2), b.batch(7, 1, 2)))
    other_seed = BatchSampler(tf, 4, 16, seed=124, world_size=4)
    variants = [a.batch(7), a.batch(8), a.batch(7, micro_step=1), a.batch(7, rank=1), other_seed.batch(7)]
    xs = [v[0] for v in variants]
    assert all(not torch.equal(xs[i], xs[j]) for i in range(len(xs)) for j in range(i + 1, len(xs)))


def test_window_offsets_are_pinned_across_library_versions(tmp_path: Path) -> None:
    # A resumed run must draw what the original drew, even after a NumPy or
    # PyTorch upgrade, so the offsets are a fixed hash of the step, spelt out here.
    tf = token_file(tmp_path, np.zeros(1000))
    # One hash per step; micro-step 1 of process 2 (of 3) holds windows (1 * 3 + 2) * 4 = 20 to 23.
    digest = hashlib.shake_256(b"gptkit-batch:5:3:0:0").digest(8 * 24)
    expected = [int.from_bytes(digest[i : i + 8], "little") % (1000 - 16) for i in range(8 * 20, 8 * 24, 8)]
    assert BatchSampler(tf, 4, 16, seed=5, world_size=3).offsets(3, micro_step=1, rank=2).tolist() == expected


def test_windows_stay_in_bounds_and_reach_both_ends(tmp_path: Path) -> None:
    ctx = 8
    exact = BatchSampler(token_file(tmp_path, np.arange(ctx + 1)), 3, ctx, seed=0)
    x, y = exact.batch(0)
    assert x.tolist() == [list(range(ctx))] * 3 and y.tolist() == [list(range(1, ctx + 1))] * 3
    loose = BatchSampler(token_file(tmp_path, np.arange(ctx + 3), "loose.bin"), 16, ctx, seed=0)
    starts = np.concatenate([loose.offsets(step) for step in range(20)])
    assert set(starts.tolist()) == {0, 1, 2}


def test_too_short_corpus_says_how_many_tokens(tmp_path: Path) -> None:
    tf = token_file(tmp_path, np.arange(10))
    with pytest.raises(DataError, match=r"has 10 tokens.*needs at least 17"):
        BatchSampler(tf, batch_size=2, context_length=16, seed=0)


def test_fixed_batches_are_the_same_every_time(tmp_path: Path) -> None:
    tf = token_file(tmp_path, np.random.default_rng(1).integers(0, 50_000, 5_000))
    first = fixed_batches(tf, 4, 16, n_batches=3, seed=9)
    second = fixed_batches(TokenFile(tf.path, tf.n_tokens), 4, 16, n_batches=3, seed=9)
    assert len(first) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    assert not torch.equal(first[0][0], first[1][0])


def test_token_file_pickles_without_its_contents(tmp_path: Path) -> None:
    tf = token_file(tmp_path, np.arange(100_000) % 50_000)
    _ = tf.tokens[0]  # map it
    clone = pickle.loads(pickle.dumps(tf))
    assert len(pickle.dumps(tf)) < 1000
    assert clone.n_tokens == tf.n_tokens and int(clone.tokens[-1]) == 99_999 % 50_000
