"""KV-cache transports: how a prefill worker's K/V reaches a decode worker's KV pool.

Role in the data flow: the prefill worker's forward pass writes layer i's K/V into its own pool;
its layer hook (worker.py) queues "layer i of tokens [lo, hi) of request r" for its sender thread,
which moves the data with one of these transports and paces it with `LinkThrottle`:

- shared memory (one host, `kind="shm"`): the decode worker's whole KV pool *is* a POSIX
  shared-memory segment (`ShmPool`, created by the decode worker, mapped by every prefill worker).
  The prefill worker copies its blocks' K/V straight from its pool into the decode worker's
  reserved blocks (`copy_runs`: one strided copy per run of consecutive slots, so usually a few
  copies per layer): one copy in total, no staging buffer, nothing for the decode side to copy.
  The decode worker only learns over the link socket that the request's KV is complete.
- torch.distributed point to point (`kind="dist"`, gloo on CPU, NCCL on GPU; any hosts): all
  workers join one process group (TCP init, e.g. tcp://127.0.0.1:PORT); per layer the prefill
  worker gathers the slots into one contiguous tensor (`gather_runs`) and `send`s it to the decode
  worker's rank after a JSON header on the link socket; the decode worker's receiver thread
  `recv`s it and scatters it into its pool (`scatter_runs`) as each layer arrives.

Slots: the pool is [num_layers, 2, n_kv_heads, num_blocks * block_size, head_dim]; the slot of
token position p of a sequence is block_table[p // bs] * bs + p % bs. A "run" (src, dst, n) is n
consecutive slots on both sides.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class KVLayout:
    num_layers: int
    n_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    dtype: str  # torch dtype name, e.g. "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, self.n_kv_heads, self.num_blocks * self.block_size, self.head_dim)

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.torch_dtype).element_size()

    def token_bytes_per_layer(self) -> int:
        return 2 * self.n_kv_heads * self.head_dim * torch.empty((), dtype=self.torch_dtype).element_size()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of_cache(cls, cache) -> "KVLayout":
        return cls(cache.num_layers, cache.n_kv_heads, cache.head_dim, cache.block_size,
                   cache.num_blocks, str(cache.kv.dtype).removeprefix("torch."))


# ---- slot runs ---------------------------------------------------------------------------------

def slot_runs(src_table: list[int], dst_table: list[int] | None, lo: int, hi: int,
              bs: int) -> list[tuple[int, int, int]]:
    """Runs (src_slot, dst_slot, n) covering token positions [lo, hi); dst None: dst_slot = 0."""
    runs: list[list[int]] = []
    p = lo
    while p < hi:
        b, off = divmod(p, bs)
        n = min(bs - off, hi - p)
        s = src_table[b] * bs + off
        d = dst_table[b] * bs + off if dst_table is not None else 0
        if runs and runs[-1][0] + runs[-1][2] == s and (dst_table is None or runs[-1][1] + runs[-1][2] == d):
            runs[-1][2] += n
        else:
            runs.append([s, d, n])
        p += n
    return [tuple(r) for r in runs]  # type: ignore[misc]


MAX_SLICE_RUNS = 16


def run_indices(runs) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot index tensors (src, dst) of the runs' tokens."""
    src = torch.cat([torch.arange(s, s + n) for s, _, n in runs])
    dst = torch.cat([torch.arange(d, d + n) for _, d, n in runs])
    return src, dst


def copy_runs(dst_layer: torch.Tensor, src_layer: torch.Tensor, runs, idx=None) -> None:
    """dst_layer/src_layer: [2, Hkv, S, D] (one layer of two pools). Few runs: one strided copy
    each, straight into dst; many (a fragmented pool): one gather + one scatter (`idx`: the
    run_indices, computed once for all layers)."""
    if len(runs) <= MAX_SLICE_RUNS:
        for s, d, n in runs:
            dst_layer[:, :, d:d + n].copy_(src_layer[:, :, s:s + n])
        return
    si, di = idx if idx is not None else run_indices(runs)
    dst_layer.index_copy_(2, di.to(dst_layer.device), src_layer.index_select(2, si.to(src_layer.device)))


def gather_runs(src_layer: torch.Tensor, runs) -> torch.Tensor:
    """-> contiguous [2, Hkv, n_total, D] of the runs' slots (src side of each run)."""
    if len(runs) == 1:
        s, _, n = runs[0]
        return src_layer[:, :, s:s + n].contiguous()
    return torch.cat([src_layer[:, :, s:s + n] for s, _, n in runs], dim=2)


def scatter_runs(dst_layer: torch.Tensor, buf: torch.Tensor, runs) -> None:
    """Inverse of gather_runs on the dst side: buf [2, Hkv, n_total, D] -> dst slots of runs."""
    o = 0
    for _, d, n in runs:
        dst_layer[:, :, d:d + n].copy_(buf[:, :, o:o + n])
        o += n


# ---- link emulation ----------------------------------------------------------------------------

class LinkThrottle:
    """A serial link of `gbps` Gb/s: `pace(nbytes, t_start)` sleeps until the bytes could have
    crossed it (transfers queue behind each other). gbps None/0: no limit."""

    def __init__(self, gbps: float | None) -> None:
        self.bytes_per_s = gbps * 1e9 / 8 if gbps else None
        self.free_at = 0.0
        self._lock = threading.Lock()

    def pace(self, nbytes: int, t_start: float) -> None:
        if not self.bytes_per_s:
            return
        with self._lock:
            begin = max(t_start, self.free_at)
            self.free_at = done = begin + nbytes / self.bytes_per_s
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# ---- shared-memory pool ------------------------------------------------------------------------

class ShmPool:
    """A KV pool tensor living in a named shared-memory segment."""

    def __init__(self, name: str, layout: KVLayout, create: bool) -> None:
        from .wire import ShmSegment

        self.layout = layout
        self.seg = ShmSegment(name, layout.nbytes, create=create)
        if self.seg.size < layout.nbytes:
            raise ValueError(f"shared-memory segment {name} is {self.seg.size} bytes, "
                             f"the KV pool needs {layout.nbytes}")
        n = layout.nbytes // torch.empty((), dtype=layout.torch_dtype).element_size()
        self.kv = torch.frombuffer(self.seg.buf, dtype=layout.torch_dtype, count=n).view(layout.shape)

    def prefault(self) -> None:
        """Map every page of the segment into this process now (read one element per 4 KiB page).

        A prefill worker otherwise faults the decode worker's pool in page by page as its first
        copies land there: that costs the first transfers time, and the worker's RSS keeps
        climbing for as long as untouched blocks remain (it looks like a leak in a soak run)."""
        flat = self.kv.view(-1)
        step = max(1, 4096 // flat.element_size())
        float(flat[::step].sum())

    @property
    def name(self) -> str:
        return self.seg.name

    def unlink(self) -> None:
        self.seg.unlink()


# ---- torch.distributed -------------------------------------------------------------------------

class DistGroup:
    """One process group over all workers of the deployment (rank = worker index)."""

    def __init__(self, init_method: str, rank: int, world_size: int, device: str = "cpu",
                 timeout_s: float = 120.0) -> None:
        import datetime

        import torch.distributed as dist

        self.dist = dist
        self.rank = rank
        self.backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(self.backend, init_method=init_method, rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def send(self, t: torch.Tensor, dst: int, tag: int = 0) -> None:
        self.dist.send(t, dst=dst, tag=tag)

    def recv(self, t: torch.Tensor, src: int, tag: int = 0) -> None:
        self.dist.recv(t, src=src, tag=tag)

    def close(self) -> None:
        try:
            self.dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer may be dead
            pass
