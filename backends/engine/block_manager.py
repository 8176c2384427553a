"""Paged KV-cache block allocator with prefix caching.

Data flow: the scheduler asks `can_allocate(seq)` / `allocate(seq)` when it admits a sequence
(blocks for all its current tokens; full blocks already in the prefix cache are shared instead of
recomputed, and `seq.num_computed_tokens` starts after them), `can_append(seq)` /
`append_slot(seq)` before each decode token, and `free(seq)` when a sequence finishes, is aborted
or is preempted. After each step the engine calls `cache_full_blocks(seq)` so that blocks whose
K/V is now computed become hits for later requests. `paged_attention` reads the resulting
`seq.block_table` (block ids into the KV pool).

Prefix cache: a full block is keyed by a chained hash h_i = hash((h_{i-1}, tokens of block i)); a
hit also compares the stored (parent hash, tokens) so a hash collision is a miss, never wrong KV.
A block whose reference count drops to 0 keeps its content and hash and waits in an LRU list;
it is evicted (hash dropped, id reused) only when a fresh block is needed and no never-cached free
block is left. Only the first `num_tokens - 1` tokens are looked up, so at least one token is always
computed (its logits give the next token).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable

from .sequence import Sequence


def default_block_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "key")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.key: tuple | None = None  # (parent hash, tokens) for the collision guard


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True,
                 hash_fn: Callable[[int | None, tuple[int, ...]], int] = default_block_hash) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: deque[int] = deque(range(num_blocks))     # never cached (or evicted)
        self.evictable: OrderedDict[int, None] = OrderedDict()    # cached, ref 0; oldest first
        self.hash_to_block: dict[int, int] = {}
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0
        # seq id -> hashes of its first len() full blocks (computed and registered or found)
        self._seq_hashes: dict[int, list[int]] = {}

    # ---- accounting -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (never-cached free + evictable cached)."""
        return len(self.free_ids) + len(self.evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self.hash_to_block)

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_queried_tokens if self.prefix_queried_tokens else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix lookup ----------------------------------------------------------------------
    def _block_tokens(self, token_ids: list[int], i: int) -> tuple[int, ...]:
        return tuple(token_ids[i * self.block_size:(i + 1) * self.block_size])

    def _lookup(self, token_ids: list[int]) -> tuple[list[int], list[int]]:
        """Cached block ids (and their hashes) for the longest cached full-block prefix."""
        if not self.enable_prefix_caching:
            return [], []
        ids, hashes = [], []
        parent = None
        for i in range((len(token_ids) - 1) // self.block_size):
            tokens = self._block_tokens(token_ids, i)
            h = self.hash_fn(parent, tokens)
            bid = self.hash_to_block.get(h)
            if bid is None or self.blocks[bid].key != (parent, tokens):
                break
            ids.append(bid)
            hashes.append(h)
            parent = h
        return ids, hashes

    def num_prefix_hit_tokens(self, seq: Sequence) -> int:
        """Tokens of seq that `allocate` would take from the prefix cache now."""
        return len(self._lookup(seq.token_ids)[0]) * self.block_size

    # ---- allocation -------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence) -> bool:
        """Would `allocate(seq)` succeed now? Never raises or changes state."""
        hit_ids, _ = self._lookup(seq.token_ids)
        hits_evictable = sum(1 for b in hit_ids if self.blocks[b].ref_count == 0)
        need = self.blocks_needed(seq.num_tokens) - len(hit_ids)
        return need <= self.num_free_blocks - hits_evictable

    def allocate(self, seq: Sequence) -> bool:
        """Give `seq` blocks for all its tokens, sharing cached prefix blocks. False: no room."""
        assert not seq.block_table, f"{seq.request_id} already holds blocks"
        if not self.can_allocate(seq):
            return False
        hit_ids, hashes = self._lookup(seq.token_ids)
        for bid in hit_ids:
            self._ref(bid)
        table = list(hit_ids)
        for _ in range(self.blocks_needed(seq.num_tokens) - len(hit_ids)):
            table.append(self._take_fresh())
        seq.block_table = table
        self._seq_hashes[id(seq)] = list(hashes)
        seq.num_computed_tokens = len(hit_ids) * self.block_size
        if self.enable_prefix_caching:
            self.prefix_queried_tokens += seq.num_tokens
            self.prefix_hit_tokens += seq.num_computed_tokens
        return True

    def can_append(self, seq: Sequence, lookahead: int = 0) -> bool:
        """Room for the K/V of all of seq's tokens (a decode needs a new block at a boundary)?
        `lookahead`: also for that many speculative tokens after them."""
        need = self.blocks_needed(seq.num_tokens + lookahead) - len(seq.block_table)
        return need <= self.num_free_blocks

    def append_slot(self, seq: Sequence, lookahead: int = 0) -> None:
        while len(seq.block_table) < self.blocks_needed(seq.num_tokens + lookahead):
            if not self.num_free_blocks:
                raise RuntimeError("no free KV block (call can_append first)")
            seq.block_table.append(self._take_fresh())

    def trim_slots(self, seq: Sequence) -> None:
        """Free the blocks past what seq's tokens need (they held only rejected speculative
        tokens: never computed as final, never registered in the prefix cache)."""
        keep = self.blocks_needed(seq.num_tokens)
        while len(seq.block_table) > keep:
            self._unref(seq.block_table.pop())

    def free(self, seq: Sequence) -> None:
        """Drop seq's references (last block first, so a prefix outlives its tails in the LRU)."""
        for bid in reversed(seq.block_table):
            self._unref(bid)
        seq.block_table = []
        seq.num_computed_tokens = 0
        self._seq_hashes.pop(id(seq), None)

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register seq's blocks that are full of computed tokens in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        hashes = self._seq_hashes.setdefault(id(seq), [])
        n_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for i in range(len(hashes), n_full):
            parent = hashes[-1] if hashes else None
            tokens = self._block_tokens(seq.token_ids, i)
            h = self.hash_fn(parent, tokens)
            hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if h in self.hash_to_block or block.hash is not None:
                continue  # same content already cached elsewhere (or a collision): keep that one
            block.hash, block.key = h, (parent, tokens)
            self.hash_to_block[h] = block.block_id

    # ---- internals --------------------------------------------------------------------------
    def _ref(self, bid: int) -> None:
        block = self.blocks[bid]
        if block.ref_count == 0:
            self.evictable.pop(bid, None)
        block.ref_count += 1

    def _unref(self, bid: int) -> None:
        block = self.blocks[bid]
        assert block.ref_count > 0, f"block {bid} freed twice"
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.hash is not None:
                self.evictable[bid] = None   # most recently used at the end
            else:
                self.free_ids.append(bid)

    def _take_fresh(self) -> int:
        if self.free_ids:
            bid = self.free_ids.popleft()
        else:
            bid, _ = self.evictable.popitem(last=False)  # least recently used
            block = self.blocks[bid]
            del self.hash_to_block[block.hash]
            block.hash = block.key = None
        self.blocks[bid].ref_count = 1
        return bid
