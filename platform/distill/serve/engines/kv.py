"""A transformers causal LM over a batch of rows that share one KV cache (continuous batching).

The rows' caches are aligned to one length by a 2-D attention mask (``0`` = no token there). Rows
grow by blocks of new tokens, right-aligned in the block so every row's last token sits in the
last column; a row with fewer new tokens than the block is padded on the left of its block.
Position ids come from the mask (``cumsum - 1``), so padding never shifts a position. Tokens can be
taken back (``discard``): their columns are masked out and columns no row uses any more are
dropped, which is how speculative decoding rolls back rejected draft tokens in every row at once
(the holes they leave are squeezed out by ``compact``)::

    lm = CachedLM(model, pad_id)
    last = lm.prefill([[1, 2, 3], [4, 5]])          # [2, vocab]: next-token logits per row
    logits = lm.extend([[6], [7, 8, 9]])           # [2, 3, vocab]: logits after each new column
    lm.discard([0, 2])                             # row 1 takes back its last two tokens
    lm.select([1])                                 # row 0 leaves

Full-attention ``DynamicLayer`` caches only (``HFEngine`` checks this at load).
"""

from __future__ import annotations

from typing import Any


def ragged(rows: list[list[int]], pad_id: int, device: Any = "cpu") -> tuple[Any, Any]:
    """``rows`` as ``[B, T]`` ids and mask, right-aligned (left-padded with ``pad_id``)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def lm_forward(model: Any, ids: Any, mask: Any, cache: Any, keep: int = 1) -> Any:
    """Logits ``[B, keep, vocab]`` of the last ``keep`` columns of ``ids``; ``mask`` covers the
    cache and ``ids``; the cache grows by ``ids``' columns."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=keep,
    )
    return out.logits


class KVBatch:
    """The running batch's KV cache and 2-D attention mask, left-padded to one length."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: Any = None  # LongTensor [batch, length], 0 = padding

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def merge(self, cache: Any, mask: Any) -> None:
        """Append the rows of a freshly prefilled ``cache`` / ``mask``."""
        import torch
        import torch.nn.functional as F

        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])

        def left_pad(x: torch.Tensor, dim_len: int) -> torch.Tensor:
            pad = length - dim_len
            return F.pad(x, (0, 0, pad, 0)) if x.ndim == 4 else F.pad(x, (pad, 0))

        old_len, new_len = self.mask.shape[1], mask.shape[1]
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, old_len), left_pad(theirs.keys, new_len)])
            mine.values = torch.cat(
                [left_pad(mine.values, old_len), left_pad(theirs.values, new_len)]
            )
        self.mask = torch.cat([left_pad(self.mask, old_len), left_pad(mask, new_len)])

    def select(self, keep: list[int]) -> None:
        """Keep only these rows (finished and cancelled sequences leave)."""
        import torch

        if not keep:
            self.cache = self.mask = None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        self.mask = self.mask.index_select(0, idx)
        self._trim()

    def discard(self, counts: list[int]) -> None:
        """Take back the last ``counts[i]`` tokens of row ``i`` (its last unmasked columns)."""
        import torch

        if self.mask is None or not any(counts):
            return
        c = torch.tensor(counts, device=self.mask.device).view(-1, 1)
        after = self.mask.flip(1).cumsum(1).flip(1)  # tokens at or after each column
        self.mask = torch.where((self.mask > 0) & (after <= c), 0, self.mask)
        self._trim()

    def holes(self) -> int:
        """Masked columns inside the cache (padding, taken-back tokens)."""
        return 0 if self.mask is None else int((self.mask == 0).sum())

    def compact(self) -> None:
        """Squeeze every row's tokens together, right-aligned (the holes go)."""
        import torch

        if self.mask is None:
            return
        counts = self.mask.sum(1)
        length = int(counts.max())
        b = self.mask.shape[0]
        # the source column of each target column: a row's tokens in order, right-aligned
        order = torch.argsort(self.mask, dim=1, stable=True)[:, -length:] if length else None
        if order is None:
            return
        new_mask = (torch.arange(length).view(1, -1) >= (length - counts).view(-1, 1)).long()
        for layer in self.cache.layers:
            _, h, _, d = layer.keys.shape
            idx = order.view(b, 1, length, 1).expand(b, h, length, d)
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx)
        self.mask = new_mask.to(self.mask.device)

    def _trim(self) -> None:
        """Drop leading and trailing columns that are padding in every row."""
        used = self.mask.any(0).nonzero()
        if not used.numel():
            start, end = self.mask.shape[1], self.mask.shape[1]
        else:
            start, end = int(used[0]), int(used[-1]) + 1
        if start > 0 or end < self.mask.shape[1]:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:end]
                layer.values = layer.values[:, :, start:end]
            self.mask = self.mask[:, start:end]


class CachedLM:
    """A causal LM and the KV cache of its rows (row ``i`` = the ``i``-th row prefilled, minus
    those ``select`` dropped)."""

    def __init__(self, model: Any, pad_id: int, device: Any = "cpu") -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = device
        self.kv = KVBatch()

    def forward(self, ids: Any, mask: Any, cache: Any, keep: int) -> Any:
        return lm_forward(self.model, ids, mask, cache, keep)

    def prefill(self, rows: list[list[int]]) -> Any:
        """New rows (appended after the current ones): next-token logits ``[n, vocab]``."""
        from transformers.cache_utils import DynamicCache

        ids, mask = ragged(rows, self.pad_id, self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self.forward(ids, mask, cache, 1)[:, -1]
        self.kv.merge(cache, mask)
        return logits

    def extend(self, rows: list[list[int]], keep: int | None = None) -> Any:
        """Feed ``rows[i]`` (at least one token each) to row ``i``: logits ``[B, keep, vocab]``
        of the block's last ``keep`` columns (all of them by default)."""
        import torch

        ids, block = ragged(rows, self.pad_id, self.device)
        mask = torch.cat([self.kv.mask, block.to(self.kv.mask.dtype)], dim=1)
        logits = self.forward(ids, mask, self.kv.cache, keep or ids.shape[1])
        self.kv.mask = mask
        return logits

    def discard(self, counts: list[int], compact_above: float = 0.5) -> None:
        """Take back the last ``counts[i]`` tokens of each row; squeeze the holes out once they
        are more than ``compact_above`` of the cache."""
        self.kv.discard(counts)
        kv = self.kv
        if kv.mask is not None and kv.holes() > compact_above * kv.mask.numel():
            kv.compact()

    def select(self, keep: list[int]) -> None:
        self.kv.select(keep)

    def reset(self) -> None:
        self.kv = KVBatch()
