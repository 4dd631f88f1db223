"""Key/value cache: keys and values of tokens already seen, kept for decoding.

Without it, generating token n recomputes attention inputs for all n - 1
earlier tokens; with it, each step computes one token's keys and values and
appends them.

`KVCache` holds rows of one length (a batch that started together);
`RaggedKVCache` holds rows of their own lengths, for sequences that join and
leave a running batch, and tells attention which keys each row may see.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class LayerKVCache:
    """Preallocated keys and values of one attention layer, filled left to right."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys and values; return all of them so far."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; {end} requested")
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def key_mask(self, window: int | None = None) -> None:
        """None: every row holds the same positions, so attention's causal mask is all there is."""

    def reset(self) -> None:
        self.length = 0


class KVCache:
    """One `LayerKVCache` per transformer block."""

    def __init__(self, n_layers: int, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.layers = [LayerKVCache(batch, heads, max_len, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()


class RaggedLayerKVCache:
    """One layer's keys and values for rows that each hold their own number of positions.

    Rows are sequences decoded together, each one token per step: `update` writes
    row b's new key at position `lengths[b]`, so rows of any lengths share a batch.
    The first `rows` rows are in use; the keys beyond a row's length are stale and
    `key_mask` hides them from attention.
    """

    def __init__(self, max_rows: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (max_rows, heads, max_len, head_dim)
        # Zeros, not empty: a masked key's weight is 0, and 0 times a NaN left in fresh memory is NaN.
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.rows = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def length(self) -> torch.Tensor:
        """Each row's position count, shape (rows,): where its next token goes."""
        return self.lengths[: self.rows]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new key and value per row at that row's length; return keys and values up to the longest row."""
        if k.shape[0] != self.rows or k.shape[2] != 1:
            raise ValueError(f"a ragged KV cache takes one position for each of its {self.rows} rows, got shape {tuple(k.shape)}")
        at = self.length
        if self.rows and int(at.max()) >= self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; {int(at.max()) + 1} requested")
        rows = torch.arange(self.rows, device=at.device)
        # Row b, every head, position at[b]: advanced indices on dims 0 and 2 put (rows,) first.
        self.keys[rows, :, at] = k[:, :, 0]
        self.values[rows, :, at] = v[:, :, 0]
        at += 1  # a view of `lengths`: the rows' counts advance in place
        end = int(at.max()) if self.rows else 0
        return self.keys[: self.rows, :, :end], self.values[: self.rows, :, :end]

    def key_mask(self, window: int | None = None) -> torch.Tensor:
        """(rows, 1, 1, keys) True where row b's one query may attend: its own keys, the last `window` of them if given."""
        lengths = self.length[:, None]
        position = torch.arange(int(lengths.max()) if self.rows else 0, device=lengths.device)
        allowed = position < lengths
        if window is not None:
            allowed &= position >= lengths - window
        return allowed[:, None, None, :]

    def put(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make `row` hold these (heads, length, head_dim) keys and values."""
        length = keys.shape[1]
        self.keys[row, :, :length] = keys
        self.values[row, :, :length] = values
        self.lengths[row] = length

    def swap(self, a: int, b: int) -> None:
        """Rows `a` and `b` trade places."""
        order, swapped = [a, b], [b, a]
        self.keys[order] = self.keys[swapped]  # the right side is a copy: an index lookup, not a view
        self.values[order] = self.values[swapped]
        self.lengths[order] = self.lengths[swapped]

    def move(self, source: int, target: int) -> None:
        """Row `target` becomes a copy of row `source` (what stays is the part up to its length)."""
        length = int(self.lengths[source])
        self.keys[target, :, :length] = self.keys[source, :, :length]
        self.values[target, :, :length] = self.values[source, :, :length]
        self.lengths[target] = length


class RaggedKVCache:
    """One `RaggedLayerKVCache` per transformer block, rows added and removed together.

    The rows in use are always the first `rows`: removing a row moves the last one
    into its place, so a step's batch is a plain slice, never a gather.
    """

    def __init__(self, n_layers: int, max_rows: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.layers = [RaggedLayerKVCache(max_rows, heads, max_len, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_rows = max_rows

    @property
    def rows(self) -> int:
        return self.layers[0].rows

    @property
    def length(self) -> torch.Tensor:
        return self.layers[0].length

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def add(self, cache: KVCache) -> int:
        """Copy row 0 of a filled uniform cache into a new row; return the row's index."""
        if self.rows == self.max_rows:
            raise ValueError(f"the ragged KV cache has all its {self.max_rows} rows in use")
        row = self.rows
        self.set_row(row, cache)
        for layer in self.layers:
            layer.rows += 1
        return row

    def set_row(self, row: int, cache: KVCache) -> None:
        """Row `row` takes row 0 of `cache` (its positions so far)."""
        end = cache.length
        for layer, source in zip(self.layers, cache.layers):
            layer.put(row, source.keys[0, :, :end], source.values[0, :, :end])

    def swap(self, a: int, b: int) -> None:
        for layer in self.layers:
            layer.swap(a, b)

    @contextlib.contextmanager
    def first_rows(self, n: int) -> Iterator[None]:
        """Within the block, only the first `n` rows take part in a forward pass."""
        rows = self.rows
        if not 0 <= n <= rows:
            raise ValueError(f"the cache has {rows} rows in use, not {n}")
        for layer in self.layers:
            layer.rows = n
        try:
            yield
        finally:
            for layer in self.layers:
                layer.rows = rows

    def remove(self, row: int) -> int | None:
        """Free `row`; return the index of the row moved into its place (the former last one), or None."""
        last = self.rows - 1
        for layer in self.layers:
            if row != last:
                layer.move(last, row)
            layer.rows -= 1
        return last if row != last else None
