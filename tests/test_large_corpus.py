"""Corpora larger than memory: streaming pieces, sharded token files, and resuming an interrupted preparation.

Sizes are tiny and shards a few hundred tokens, so many shards and batch
seams appear in a corpus of kilobytes. The reference for sharded output is
always something computed without shards: the source bytes themselves (with
`ByteTokenizer`, token id = byte), the GPT-2 tokens of the whole text, or an
uninterrupted run in another cache directory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from conftest import EOT, REPO_ROOT, ByteTokenizer, subprocess_env

from gptkit.data.batches import BatchSampler
from gptkit.data.corpus import iter_file_pieces, split_files
from gptkit.data.dataset import prepare_dataset
from gptkit.data.shards import ShardedTokens, TokenFile

if TYPE_CHECKING:
    from gptkit.data.tokenizer import Tokenizer

@pytest.fixture
def real_tokenizer() -> Tokenizer:
    module = pytest.importorskip("gptkit.data.tokenizer")
    return module.Tokenizer()


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def make_corpus(root: Path, n: int = 40) -> list[Path]:
    """Files of varied length and content, some multi-byte, one with a byte-order mark."""
    files = []
    for i in range(n):
        body = "".join(f"doc {i} line {j}: {'word ' * (j % 7)}café 日本 {i * j}\n" for j in range(10 + i * 3))
        files.append(write(root / f"d{i % 4}" / f"f{i:02d}.txt", ("\ufeff" if i == 5 else "") + body))
    return sorted(files)


def expected_tokens(*docs: bytes) -> np.ndarray:
    """What ByteTokenizer should write for these documents, in order (a BOM is not text)."""
    out: list[int] = []
    for doc in docs:
        doc = doc.removeprefix(b"\xef\xbb\xbf")
        if doc:
            out.extend(doc)
            out.append(EOT)
    return np.array(out, dtype=np.uint16)


def shard_bytes(manifest_path: Path, split: str) -> list[tuple[dict[str, object], bytes]]:
    """Each shard the manifest lists for `split`, with the bytes of its file."""
    manifest = json.loads(manifest_path.read_text())
    return [(s, (manifest_path.parent / s["file"]).read_bytes()) for s in manifest[split]["shards"]]


def concatenated(manifest_path: Path, split: str) -> np.ndarray:
    parts = [np.frombuffer(data, dtype=np.uint16) for _, data in shard_bytes(manifest_path, split)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


# --- pieces of one huge file ---------------------------------------------------------------


def test_pieces_never_split_a_character_and_resume_from_any_piece(tmp_path: Path) -> None:
    # One 9000-byte line of 1- to 4-byte characters with no space or newline:
    # the reader must cut hard, and only between characters.
    line = "aé日😀" * 900
    text = "short line\n" + line + "\nafter the long line, words and 🙂 emoji\n" * 40
    path = write(tmp_path / "long.txt", text)
    pieces = list(iter_file_pieces(path, 512))
    assert "".join(p.text for p in pieces) == text
    assert all(0 < len(p.text.encode()) <= 512 for p in pieces)
    ends = np.cumsum([len(p.text.encode()) for p in pieces]).tolist()
    assert [p.end for p in pieces] == ends and ends[-1] == path.stat().st_size
    assert [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]
    # Starting at any piece's end gives exactly the rest of the pieces.
    for k in (1, 7, len(pieces) // 2, len(pieces) - 1):
        assert list(iter_file_pieces(path, 512, start=pieces[k - 1].end)) == pieces[k:]


def test_a_bom_is_skipped_but_counted_in_offsets(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.txt", "\ufeffhello\nworld\n")
    pieces = list(iter_file_pieces(path, 100))
    assert [p.text for p in pieces] == ["hello\nworld\n"] and pieces[0].end == 15


def test_cuts_fall_on_seams_that_keep_gpt2_tokens(tmp_path: Path, real_tokenizer: Tokenizer) -> None:
    # Prose lines, indented code, blank lines, CRLF, trailing spaces, tabs,
    # multi-byte text and lines longer than half a piece: both seams the
    # reader may choose occur, and many
    # whitespace runs where a cut would change the tokens ("\n\n\n", "\n    ").
    text = "".join(
        f"def f{i}(x):\n    return x  +  {i} # it's {i}'s\n\n\n"
        f"Plain prose, line {i}.\nNext line follows\r\n"
        f"  trailing spaces   \n\tÜnïcödé 東京 text…\n{'=' * 40}\n"
        f"{'a long line of prose, ' * (i % 20)}end\n"
        for i in range(400)
    )
    path = write(tmp_path / "t.py", text)
    pieces = list(iter_file_pieces(path, 200))
    assert len(pieces) > 100
    newline_cuts = space_cuts = 0
    for a, b in itertools.pairwise(pieces):
        if a.text[-1] == "\n":
            assert 0x21 <= ord(a.text[-2]) <= 0x7E and 0x21 <= ord(b.text[0]) <= 0x7E
            newline_cuts += 1
        else:
            assert 0x21 <= ord(a.text[-1]) <= 0x7E and b.text[0] == " "
            space_cuts += 1
    assert newline_cuts > 50 and space_cuts > 0
    joined = [t for ids in real_tokenizer.encode_batch([p.text for p in pieces]) for t in ids]
    assert joined == real_tokenizer.encode(text)


def test_a_huge_single_line_is_never_held_whole(tmp_path: Path) -> None:
    path = tmp_path / "one-line.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{i}-x€y日-" for i in range(40_000))  # 8 MB without a space or newline
    size = path.stat().st_size
    tracemalloc.start()
    try:
        total = 0
        for piece in iter_file_pieces(path, 64 << 10):
            total += len(piece.text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(path.read_text(encoding="utf-8"))
    # A few pieces' worth of buffers (64 KB each), not the 8 MB file.
    assert peak < 1_000_000, (peak, size)


# --- shards ----------------------------------------------------------------------------------


def test_shards_concatenate_to_the_unsharded_tokens(tmp_path: Path) -> None:
    files = make_corpus(tmp_path / "corpus")
    whole = prepare_dataset(str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "one", val_fraction=0.2)
    sharded = prepare_dataset(
        str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "many", val_fraction=0.2, chunk_bytes=256, shard_tokens=3000
    )
    train_files, val_files = split_files(files, 0.2, root=tmp_path / "corpus")
    for split, split_files_ in (("train", train_files), ("val", val_files)):
        expected = expected_tokens(*(f.read_bytes() for f in split_files_))
        np.testing.assert_array_equal(concatenated(whole.manifest_path, split), expected)
        np.testing.assert_array_equal(concatenated(sharded.manifest_path, split), expected)
        shards = shard_bytes(sharded.manifest_path, split)
        for entry, data in shards:
            assert entry["tokens"] * 2 == len(data) and 0 < entry["tokens"] <= 3000
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert json.loads(sharded.manifest_path.read_text())[split]["tokens"] == len(expected)
    assert isinstance(whole.train, TokenFile) and isinstance(sharded.train, ShardedTokens)
    assert len(shard_bytes(sharded.manifest_path, "train")) > 10
    assert sharded.stats.n_shards == len(shard_bytes(sharded.manifest_path, "train")) + len(
        shard_bytes(sharded.manifest_path, "val")
    )
    again = prepare_dataset(
        str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "many", val_fraction=0.2, chunk_bytes=256, shard_tokens=3000
    )
    assert again.stats.cached and again.train == sharded.train


def test_single_file_split_by_position_across_shards(tmp_path: Path, real_tokenizer: Tokenizer) -> None:
    import textwrap as stdlib_module  # any real Python source

    text = Path(stdlib_module.__file__).read_text(encoding="utf-8") * 3
    src = write(tmp_path / "one.py", text)
    data = prepare_dataset(str(src), real_tokenizer, tmp_path / "cache", val_fraction=0.1, chunk_bytes=2048, shard_tokens=700)
    everything = real_tokenizer.encode(text) + [real_tokenizer.eot_id]
    n_val = round(len(everything) * 0.1)
    np.testing.assert_array_equal(concatenated(data.manifest_path, "train"), everything[:-n_val])
    np.testing.assert_array_equal(concatenated(data.manifest_path, "val"), everything[-n_val:])
    assert len(data.train) == len(everything) - n_val and len(data.val) == n_val
    assert isinstance(data.val, ShardedTokens)  # the val tail spans more than one shard
    leftovers = {p.name for p in data.manifest_path.parent.iterdir()} - {
        s["file"] for split in ("train", "val") for s in json.loads(data.manifest_path.read_text())[split]["shards"]
    }
    assert leftovers == {"manifest.json"}  # no journal, no temporary files


def test_sharded_tokens_read_like_one_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 50_000, n, dtype=np.uint16) for n in (5, 1, 300, 0, 77)]
    shards = []
    for i, a in enumerate(arrays):
        a.tofile(tmp_path / f"s{i}.bin")
        shards.append(TokenFile(tmp_path / f"s{i}.bin", len(a)))
    seq = ShardedTokens(tuple(shards), tmp_path / "manifest.json")
    whole = np.concatenate(arrays)
    assert len(seq) == seq.n_tokens == len(whole) and seq.tokens is seq
    for a, b in [(0, 383), (3, 9), (5, 6), (4, 6), (0, 0), (300, 320), (380, 500), (-10, -1)]:
        np.testing.assert_array_equal(seq[a:b], whole[a:b])
    np.testing.assert_array_equal(seq[::7], whole[::7])
    idx = rng.integers(-len(whole), len(whole), (4, 9))
    np.testing.assert_array_equal(seq[idx], whole[idx])
    assert seq[5] == whole[5] and seq[-1] == whole[-1]
    with pytest.raises(IndexError):
        seq[len(whole)]
    copy = pickle.loads(pickle.dumps(seq))
    assert len(pickle.dumps(seq)) < 2000  # paths and counts, not the tokens
    np.testing.assert_array_equal(copy[0:383], whole)


def test_batches_are_the_same_as_from_one_file(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    data = prepare_dataset(
        str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "cache", val_fraction=0.0, chunk_bytes=256, shard_tokens=3000
    )
    assert isinstance(data.train, ShardedTokens)
    flat = tmp_path / "flat.bin"
    concatenated(data.manifest_path, "train").tofile(flat)
    reference = BatchSampler(TokenFile(flat, len(data.train)), batch_size=16, context_length=256, seed=3)
    sampler = BatchSampler(data.train, batch_size=16, context_length=256, seed=3)
    starts = set(np.cumsum([s.n_tokens for s in data.train.shards]).tolist())
    crossing = 0
    for step in range(12):
        x, y = sampler.batch(step)
        rx, ry = reference.batch(step)
        assert x.equal(rx) and y.equal(ry)
        crossing += sum(any(o < b <= o + 256 for b in starts) for o in sampler.offsets(step).tolist())
    assert crossing > 5  # windows that run across a shard boundary were drawn and read right


# --- interrupt and resume ----------------------------------------------------------------------

KILLABLE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gptkit.data.dataset import prepare_dataset

    class SlowBytes:
        name, vocab_size, eot_id = "bytes", 257, 256
        def encode_batch(self, texts, num_threads=2):
            time.sleep(0.05)  # slow enough to be killed part-way
            return [list(t.encode("utf-8")) for t in texts]

    src, cache, chunk, shard = sys.argv[1:]
    prepare_dataset(src, SlowBytes(), Path(cache), val_fraction=0.2, chunk_bytes=int(chunk), shard_tokens=int(shard))
    """
)


def test_killed_preparation_resumes_to_identical_output(tmp_path: Path) -> None:
    files = make_corpus(tmp_path / "corpus", n=30)
    src, chunk, shard = str(tmp_path / "corpus"), 512, 4096
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, src, str(tmp_path / "cache"), str(chunk), str(shard)],
        cwd=REPO_ROOT,
        env=subprocess_env(PYTHONPATH=str(REPO_ROOT)),
        stderr=subprocess.PIPE,
    )
    journal_path = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((tmp_path / "cache").glob("tokens/*/progress.json"))
            if found and len(json.loads(found[0].read_text())["streams"].get("train", [])) >= 3:
                journal_path = found[0]
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
    assert journal_path is not None, stderr.decode()
    out_dir = journal_path.parent
    assert not (out_dir / "manifest.json").exists()  # killed part-way, not after the end
    finished = json.loads(journal_path.read_text())["streams"]["train"]
    identity = {s["file"]: (os.stat(out_dir / s["file"]).st_ino, os.stat(out_dir / s["file"]).st_mtime_ns) for s in finished}

    tok = ByteTokenizer()
    resumed = prepare_dataset(src, tok, tmp_path / "cache", val_fraction=0.2, chunk_bytes=chunk, shard_tokens=shard)
    reference = prepare_dataset(src, ByteTokenizer(), tmp_path / "ref", val_fraction=0.2, chunk_bytes=chunk, shard_tokens=shard)

    # Same shards, byte for byte, as the run that was never interrupted.
    for split in ("train", "val"):
        got, want = shard_bytes(resumed.manifest_path, split), shard_bytes(reference.manifest_path, split)
        assert [e for e, _ in got] == [e for e, _ in want] and [d for _, d in got] == [d for _, d in want]
    train_files, _ = split_files(files, 0.2, root=tmp_path / "corpus")
    np.testing.assert_array_equal(
        concatenated(resumed.manifest_path, "train"), expected_tokens(*(f.read_bytes() for f in train_files))
    )
    # The finished shards were kept, not rewritten, and their text was not tokenized again.
    for name, (inode, mtime) in identity.items():
        assert (os.stat(out_dir / name).st_ino, os.stat(out_dir / name).st_mtime_ns) == (inode, mtime)
    file_index, offset = finished[-1]["stop"]
    done_bytes = sum(f.stat().st_size for f in train_files[:file_index]) + offset
    total = sum(f.stat().st_size for f in files)
    assert resumed.stats.resumed_bytes == done_bytes > 0
    # The byte-order mark of f05 is source text that never reaches the tokenizer.
    bom_file = next(f for f in files if f.name == "f05.txt")
    bom_left = bom_file in train_files[file_index + (offset > 0) :] or bom_file not in train_files
    assert tok.encoded_bytes == total - done_bytes - 3 * bom_left
    assert sorted(p.name for p in out_dir.iterdir() if not p.name.endswith(".bin")) == ["manifest.json"]


def test_ctrl_c_then_resume_on_a_single_file(tmp_path: Path) -> None:
    body = "".join(f"line {i}: some words, then more words\n" for i in range(3000)).encode()
    src = str(write(tmp_path / "one.txt", body))
    kwargs = {"val_fraction": 0.1, "chunk_bytes": 512, "shard_tokens": 4000}
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(src, ByteTokenizer(interrupt_after=60), tmp_path / "cache", **kwargs)
    out_dir = next((tmp_path / "cache" / "tokens").iterdir())
    finished = json.loads((out_dir / "progress.json").read_text())["streams"]["text"]
    assert len(finished) >= 5
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]

    tok = ByteTokenizer()
    resumed = prepare_dataset(src, tok, tmp_path / "cache", **kwargs)
    reference = prepare_dataset(src, ByteTokenizer(), tmp_path / "ref", **kwargs)
    assert tok.encoded_bytes == len(body) - finished[-1]["stop"][1]
    everything = expected_tokens(body)
    n_val = round(len(everything) * 0.1)
    for split, want in (("train", everything[:-n_val]), ("val", everything[-n_val:])):
        np.testing.assert_array_equal(concatenated(resumed.manifest_path, split), want)
        assert shard_bytes(resumed.manifest_path, split) == shard_bytes(reference.manifest_path, split)

    # Another shard size lays the shards out differently: an unfinished run
    # made with the old one is not resumed but started over.
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(src, ByteTokenizer(interrupt_after=60), tmp_path / "other", **kwargs)
    tok = ByteTokenizer()
    redone = prepare_dataset(src, tok, tmp_path / "other", **{**kwargs, "shard_tokens": 2500})
    assert tok.encoded_bytes == len(body) and redone.stats.resumed_bytes == 0
    np.testing.assert_array_equal(concatenated(redone.manifest_path, "val"), everything[-n_val:])
