"""Engine statistics: one typed snapshot that every engine reports and `/metrics` exports.

Data flow:

    LLMEngine.stats() (AsyncEngine.stats() delegates)            -> EngineStats
    disagg worker: EngineStats.to_dict() in its "ready" and "trace" messages (JSON)
      -> router: EngineStats.from_dict() per worker
      -> DisaggEngine.stats() = combine(alive workers' snapshots) + workers alive per role
    http/app.py reads the snapshot by attribute and renders Prometheus text.

Counters are totals since the engine started; gauges are the state at the time of the call.
No torch here: the HTTP side and the router import this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Upper bounds (seconds) of the step-time histogram's buckets; a last bucket takes the rest (+Inf).
STEP_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class StepTimeHistogram:
    """Engine step wall times: counts per bucket of STEP_TIME_BUCKETS plus +Inf (not cumulative)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(STEP_TIME_BUCKETS) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(STEP_TIME_BUCKETS) and seconds > STEP_TIME_BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.sum_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) per bucket, the last bound being +Inf."""
        out, acc = [], 0
        for le, c in zip(STEP_TIME_BUCKETS + (float("inf"),), self.counts):
            acc += c
            out.append((le, acc))
        return out

    def copy(self) -> "StepTimeHistogram":
        return StepTimeHistogram(list(self.counts), self.sum_s)


@dataclass
class SpecStats:
    """Speculative decoding totals (all zero, enabled False, when the engine does not speculate)."""

    enabled: bool = False
    proposed_total: int = 0
    accepted_total: int = 0
    verify_steps_total: int = 0
    acceptance_rate: float = 0.0           # accepted / proposed
    draft_kv_blocks_used: int = 0          # the draft model's own KV pool ("draft:" only)


@dataclass
class DisaggWorkerStats:
    """A disaggregated worker's KV hand-offs in progress (summed over workers by the router)."""

    imports: int = 0             # decode side: requests whose prompt KV is arriving or arrived
    pending_reserves: int = 0    # decode side: reservations waiting for free blocks
    exports: int = 0             # prefill side: requests whose KV is being sent


@dataclass
class EngineStats:
    running: int = 0                     # requests in the running batch
    waiting: int = 0                     # requests waiting for admission
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0              # including evictable cached blocks
    kv_blocks_cached: int = 0            # blocks registered in the prefix cache
    block_size: int = 0                  # tokens per KV block
    prefix_hit_rate: float = 0.0         # prefix_hit_tokens / prefix_queried_tokens
    prefix_hit_tokens: int = 0
    prefix_queried_tokens: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_finished_total: int = 0
    preemptions_total: int = 0
    steps_total: int = 0
    step_time: StepTimeHistogram = field(default_factory=StepTimeHistogram)
    spec: SpecStats = field(default_factory=SpecStats)
    disagg: DisaggWorkerStats | None = None      # a disaggregated deployment's workers
    workers_alive_prefill: int | None = None     # the disaggregated router only
    workers_alive_decode: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready (the disagg workers send it to the router)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EngineStats":
        d = dict(d)
        hist = StepTimeHistogram(**d.pop("step_time"))
        spec = SpecStats(**d.pop("spec"))
        disagg = d.pop("disagg", None)
        return cls(**d, step_time=hist, spec=spec,
                   disagg=DisaggWorkerStats(**disagg) if disagg is not None else None)


_SUMMED = ("running", "waiting", "kv_blocks_total", "kv_blocks_used", "kv_blocks_free",
           "kv_blocks_cached", "prefix_hit_tokens", "prefix_queried_tokens", "prompt_tokens_total",
           "generation_tokens_total", "requests_finished_total", "preemptions_total", "steps_total")


def combine(parts: list[EngineStats]) -> EngineStats:
    """Several engines' snapshots as one deployment's: counts and totals summed, rates recomputed
    from the summed counts, the block size shared (the workers run one engine configuration)."""
    total = EngineStats(**{name: sum(getattr(p, name) for p in parts) for name in _SUMMED})
    total.block_size = max((p.block_size for p in parts), default=0)
    if total.prefix_queried_tokens:
        total.prefix_hit_rate = total.prefix_hit_tokens / total.prefix_queried_tokens
    for p in parts:
        total.step_time.counts = [a + b for a, b in zip(total.step_time.counts, p.step_time.counts)]
        total.step_time.sum_s += p.step_time.sum_s
        s, t = p.spec, total.spec
        t.enabled = t.enabled or s.enabled
        t.proposed_total += s.proposed_total
        t.accepted_total += s.accepted_total
        t.verify_steps_total += s.verify_steps_total
        t.draft_kv_blocks_used += s.draft_kv_blocks_used
        if p.disagg is not None:
            total.disagg = total.disagg or DisaggWorkerStats()
            total.disagg.imports += p.disagg.imports
            total.disagg.pending_reserves += p.disagg.pending_reserves
            total.disagg.exports += p.disagg.exports
    if total.spec.proposed_total:
        total.spec.acceptance_rate = total.spec.accepted_total / total.spec.proposed_total
    return total
