"""The simulator's data types: what a caller builds (a deployment, the requests) and reads (the result).

Role in the data flow: `workloads/planning/simulator.py` (the event loop) runs `SimRequests` on a
`Deployment` and returns a `SimResult`; the planner, `infer-bench simulate`/`plan`, the
benchmarks and the tests build these types here. No event loop in this module: the deployment's
configuration (`InstanceConfig` per instance: scheduling policy, KV allocation, token budget,
optional per-role latency model; `Link`, the KV link of a disaggregated deployment; `Deployment`,
mono or xPyD) is validated at construction, and how the simulator applies it is the model
described in simulator.py's docstring.

Requests (arrival time, n_input, n_output): `requests_from_spec(WorkloadSpec, ArrivalSpec)`
builds them with `workloads.arrivals.send_times` and the spec's length distributions, drawn
exactly as `workloads/synthetic.py` draws them (`spec_lengths`, via
`WorkloadSpec.sample_lengths`: same seed -> same lengths; empirical `file:` lengths included,
input/output pairs kept joint, multi-turn prompts grown by their history: see
workloads/length_data.py); `poisson_requests` gives given lengths Poisson arrivals.

Result: a `SimResult` of per-request numpy arrays, turned into `workloads.records.RequestRecord`s
with `to_records()` so `workloads.results.compute_summary` and the report apply unchanged;
`attainment(slo)` computes joint SLO attainment with the definitions of `workloads/metrics.py`
directly on the arrays (fast, for rate sweeps). Without per-token times (`simulate(...,
per_token=False)`) a record gets two chunks: 1 token, then n_output-1 tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ..arrivals import send_times
from .latency_model import LatencyModel
from ..spec import ArrivalSpec, WorkloadSpec

MODES = ("mono", "disagg")
# how an instance orders prefills and decodes in a step (see workloads/planning/simulator.py's
# docstring)
SCHEDULING_POLICIES = ("chunked", "prefill_priority", "decode_priority")
# how an instance allocates KV blocks (see workloads/planning/simulator.py's docstring)
KV_ALLOC_POLICIES = ("reserve", "on_demand")


# ---------------------------------------------------------------------------- configuration

@dataclass
class InstanceConfig:
    """One engine instance (a group of `chips` accelerators running one model replica)."""

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    kv_capacity_tokens: int | None = None  # None: the latency model's, else unlimited
    chunked_prefill: bool = True
    chips: int = 1
    # delay from work reaching an IDLE instance to its first step (thread wake-up, message
    # hops); work arriving meanwhile joins that step. The CPU reference engine: ~5 ms (Python's
    # GIL switch interval), which is why two requests sent ~1 ms apart share a prefill step
    wake_s: float = 0.0
    # scheduling policy, one of SCHEDULING_POLICIES ("chunked": the bundled engine's)
    policy: str = "chunked"
    # KV allocation, one of KV_ALLOC_POLICIES ("on_demand": the bundled engine's)
    kv_alloc: str = "on_demand"
    # the step-time model of this role's instances (per-role profile, TP degree); None: the
    # model passed to simulate()
    latency_model: LatencyModel | None = None

    def __post_init__(self) -> None:
        if self.policy not in SCHEDULING_POLICIES:
            raise ValueError(f"policy must be one of {SCHEDULING_POLICIES}, not {self.policy!r}")
        if self.kv_alloc not in KV_ALLOC_POLICIES:
            raise ValueError(f"kv_alloc must be one of {KV_ALLOC_POLICIES}, not {self.kv_alloc!r}")
        if self.latency_model is not None and not isinstance(self.latency_model, LatencyModel):
            raise ValueError("latency_model must be a LatencyModel or None")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1 or self.block_size < 1:
            raise ValueError("max_num_batched_tokens, max_num_seqs and block_size must be >= 1")
        if self.wake_s < 0:
            raise ValueError("wake_s must be >= 0")
        if self.max_num_seqs > self.max_num_batched_tokens:
            raise ValueError(f"max_num_seqs ({self.max_num_seqs}) must not exceed "
                             f"max_num_batched_tokens ({self.max_num_batched_tokens})")


@dataclass
class Link:
    """The link that carries KV from a prefill instance to a decode instance."""

    bandwidth_gbps: float = 100.0
    latency_s: float = 0.0
    layerwise: bool = False

    def __post_init__(self) -> None:
        if self.bandwidth_gbps <= 0 or self.latency_s < 0:
            raise ValueError("link bandwidth must be > 0 and latency >= 0")

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_gbps * 1e9 / 8.0

    def transfer_time(self, nbytes: float) -> float:
        """Whole-transfer time: bytes / bandwidth + latency."""
        return nbytes / self.bytes_per_s + self.latency_s


@dataclass
class Deployment:
    mode: str = "mono"
    num_instances: int = 1                  # mono
    num_prefill: int = 1                    # disagg
    num_decode: int = 1                     # disagg
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    prefill_instance: InstanceConfig | None = None   # disagg: default `instance`
    decode_instance: InstanceConfig | None = None
    link: Link = field(default_factory=Link)
    conditional_threshold: int = 0          # disagg: prompts shorter than this prefill on decode
    first_token_from_prefill: bool = False
    # client-to-server latency of a request (HTTP, tokenization, the way back of its tokens):
    # a request reaches the deployment intake_s after it is sent
    intake_s: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.intake_s < 0:
            raise ValueError("intake_s must be >= 0")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.mode == "mono" and self.num_instances < 1:
            raise ValueError("mono needs num_instances >= 1")
        if self.mode == "disagg" and (self.num_prefill < 1 or self.num_decode < 1):
            raise ValueError("disagg needs num_prefill >= 1 and num_decode >= 1")
        if not self.name:
            self.name = self.label()

    def label(self) -> str:
        if self.mode == "mono":
            return f"mono x{self.num_instances}"
        s = f"{self.num_prefill}P{self.num_decode}D"
        if self.conditional_threshold:
            s += f" cond<{self.conditional_threshold}"
        return s

    @property
    def p_cfg(self) -> InstanceConfig:
        return self.prefill_instance or self.instance

    @property
    def d_cfg(self) -> InstanceConfig:
        return self.decode_instance or self.instance

    def chips(self) -> int:
        if self.mode == "mono":
            return self.num_instances * self.instance.chips
        return self.num_prefill * self.p_cfg.chips + self.num_decode * self.d_cfg.chips

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("instance", "prefill_instance", "decode_instance"):
            cfg = getattr(self, key)
            if cfg is not None and cfg.latency_model is not None:
                d[key]["latency_model"] = cfg.latency_model.to_dict()   # the profile's JSON form
        d["chips"] = self.chips()
        return d


# ---------------------------------------------------------------------------- requests

@dataclass
class SimRequests:
    """Requests to simulate: arrival time (s; None/NaN for closed-loop), prompt and output
    lengths. Arrays of equal length."""

    arrival_s: np.ndarray
    n_input: np.ndarray
    n_output: np.ndarray
    concurrency: int | None = None   # closed-loop: arrival_s ignored

    def __len__(self) -> int:
        return len(self.n_input)


def spec_lengths(workload: WorkloadSpec) -> tuple[np.ndarray, np.ndarray]:
    """(n_input, n_output) exactly as workloads/synthetic.py draws them for `workload`."""
    rng = np.random.default_rng(workload.seed)
    n = workload.num_requests
    n_in, n_out = workload.sample_lengths(rng, n)
    n_in = np.maximum(np.maximum(n_in, int(workload.shared_prefix_len)), 1)
    return n_in.astype(np.int64), np.maximum(n_out, 1).astype(np.int64)


def requests_from_spec(workload: WorkloadSpec, arrival: ArrivalSpec) -> SimRequests:
    """The requests of a real run of `workload` at `arrival` (lengths and send times)."""
    n_in, n_out = spec_lengths(workload)
    if arrival.kind == "concurrency":
        return SimRequests(np.zeros(len(n_in)), n_in, n_out, concurrency=int(arrival.concurrency))
    t = send_times(arrival, len(n_in))
    return SimRequests(np.asarray(t, dtype=float), n_in, n_out)


# ---------------------------------------------------------------------------- results

@dataclass
class SimResult:
    deployment: Deployment
    n_input: np.ndarray
    n_output: np.ndarray
    send_s: np.ndarray
    first_token_s: np.ndarray        # NaN: failed
    last_token_s: np.ndarray
    queue_s: np.ndarray
    prefill_s: np.ndarray
    transfer_s: np.ndarray           # exposed transfer (disagg), NaN otherwise
    transfer_bytes: np.ndarray
    admission_s: np.ndarray
    failed: np.ndarray               # bool
    token_times: list | None = None  # per request: list of per-token times (per_token=True)
    preemptions: np.ndarray | None = None   # per request: times preempted (on-demand KV)
    n_steps: int = 0
    sim_wall_s: float = 0.0

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.send_s

    @property
    def tpot_s(self) -> np.ndarray:
        """NaN where undefined (n_output <= 1 or failed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (self.last_token_s - self.first_token_s) / (self.n_output - 1)
        return np.where(self.n_output > 1, t, np.nan)

    @property
    def e2e_s(self) -> np.ndarray:
        return self.last_token_s - self.send_s

    def attainment(self, slo) -> float:
        """Joint SLO attainment (metrics.slo_checks semantics: failed = miss, undefined TPOT
        passes the TPOT test)."""
        s_ttft = getattr(slo, "ttft_s", None) if not isinstance(slo, dict) else slo.get("ttft_s")
        s_tpot = getattr(slo, "tpot_s", None) if not isinstance(slo, dict) else slo.get("tpot_s")
        ok = ~self.failed & ~np.isnan(self.first_token_s)
        if s_ttft is not None:
            ok &= self.ttft_s <= s_ttft + 1e-12
        if s_tpot is not None:
            tp = self.tpot_s
            ok &= np.isnan(tp) | (tp <= s_tpot + 1e-12)
        return float(ok.mean()) if len(ok) else float("nan")

    def percentiles(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        ok = ~self.failed
        for name, arr in (("ttft", self.ttft_s), ("tpot", self.tpot_s), ("e2e", self.e2e_s)):
            a = arr[ok]
            a = a[~np.isnan(a)]
            out[f"{name}_mean_s"] = float(a.mean()) if a.size else None
            for p in (50, 90, 99):
                out[f"{name}_p{p}_s"] = float(np.percentile(a, p)) if a.size else None
        return out

    def to_records(self, deployment: str | None = None, load_point: str = "sim",
                   per_token: bool | None = None) -> list:
        """`workloads.records.RequestRecord`s (the rows a real run would write)."""
        from .. import metrics
        from ..records import RequestRecord

        dep = deployment or self.deployment.name
        per_token = self.token_times is not None if per_token is None else per_token
        if per_token and self.token_times is None:
            raise ValueError("this result was simulated with per_token=False")
        recs = []
        f = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)  # noqa: E731
        for i in range(len(self.n_input)):
            n_out = int(self.n_output[i])
            send = float(self.send_s[i])
            rec = RequestRecord(deployment=dep, load_point=load_point, request_id=f"sim-{i:06d}",
                                intended_send_s=send, send_s=send, n_input=int(self.n_input[i]),
                                max_tokens=n_out, n_output_source="simulated")
            if self.failed[i]:
                rec.error, rec.error_type = "exceeds KV capacity", "rejected"
                recs.append(rec)
                continue
            first, last = float(self.first_token_s[i]), float(self.last_token_s[i])
            if per_token:
                times = [float(t) for t in self.token_times[i]]
                toks = [1] * len(times)
            elif n_out > 1:
                times, toks = [first, last], [1, n_out - 1]
            else:
                times, toks = [first], [1]
            rec.first_token_s, rec.last_token_s, rec.end_s = first, last, last
            rec.n_output = n_out
            rec.chunk_times_s, rec.chunk_tokens = times, toks
            rec.finish_reason = "length"
            rec.ttft_s = first - send
            rec.ttft_from_intended_s = rec.ttft_s
            rec.tpot_s = metrics.tpot(first, last, n_out, 1)
            rec.e2e_s = last - send
            rec.server_queue_s = f(self.queue_s[i])
            rec.server_prefill_s = f(self.prefill_s[i])
            rec.server_transfer_s = f(self.transfer_s[i])
            rec.server_transfer_bytes = f(self.transfer_bytes[i])
            rec.server_admission_s = f(self.admission_s[i])
            rec.server_decode_s = last - first
            recs.append(rec)
        return recs


def poisson_requests(n_input: Sequence[int], n_output: Sequence[int], rate: float,
                     seed: int = 0) -> SimRequests:
    """Poisson arrivals at `rate` for the given lengths (via workloads.arrivals)."""
    t = send_times(ArrivalSpec(kind="poisson", rate=rate, seed=seed), len(n_input))
    return SimRequests(np.asarray(t, float), np.asarray(n_input, np.int64),
                       np.asarray(n_output, np.int64))
