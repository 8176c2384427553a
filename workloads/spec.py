"""Workload and load specifications: what is sent (WorkloadSpec), when (ArrivalSpec / LoadPoint),
and what counts as good (SLO).

Role in the data flow: the CLI / runner builds these from flags or a TOML file;
`workloads/datasets.build_requests` turns a WorkloadSpec into prompts, `workloads/arrivals.py` turns an
ArrivalSpec into send times, `workloads/metrics.py` judges records against an SLO; `to_dict()` is
what lands in spec.json (and `from_dict` reads it back); `load_point_info(spec_json)` is the one
reading of a load point's arrival (kind, offered rate, concurrency) from spec.json, used by the
summary, the planner's validation and the benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

LENGTH_KINDS = ("fixed", "uniform", "normal", "lognormal", "empirical")
LENGTH_COLUMNS = ("input", "output")
ARRIVAL_KINDS = ("poisson", "constant", "gamma", "concurrency", "trace")
ENDPOINTS = ("completions", "chat")
WORKLOAD_KINDS = ("synthetic", "sharegpt", "shared_prefix", "multi_turn", "trace")


@dataclass
class LengthDist:
    """A token-length distribution; samples are rounded and clipped to [min, max].
    fixed: `mean`; uniform: integers in [low, high]; normal: mean, std;
    lognormal: `mean` of the lengths and `sigma` of the underlying normal;
    empirical: the lengths of the file at `path` (`workloads/length_data.py`: numbers, CSV,
    JSONL, ShareGPT; multi-turn prompts grown by their history), drawn uniformly over its rows;
    `column` ("input" | "output") picks one side of a two-column file (a WorkloadSpec sets it
    to the side the distribution is used for; a one-column file serves either side). When a
    WorkloadSpec's input and output come from the same two-column file they are drawn as pairs
    (`WorkloadSpec.sample_lengths`)."""

    kind: str = "fixed"
    mean: float | None = None
    std: float | None = None
    low: int | None = None
    high: int | None = None
    sigma: float | None = None
    min: int = 1
    max: int | None = None
    path: str | None = None
    column: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_KINDS:
            raise ValueError(f"length distribution kind must be one of {LENGTH_KINDS}, "
                             f"not {self.kind!r}")
        need = {"fixed": ("mean",), "uniform": ("low", "high"), "normal": ("mean", "std"),
                "lognormal": ("mean", "sigma"), "empirical": ("path",)}[self.kind]
        if self.kind == "empirical" and self.path is not None:
            self.path = str(self.path)
            if self.column is not None and self.column not in LENGTH_COLUMNS:
                raise ValueError(f"empirical length column must be one of {LENGTH_COLUMNS}, "
                                 f"not {self.column!r}")
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{self.kind} length distribution needs {', '.join(missing)}")
        if self.kind == "uniform" and self.low > self.high:
            raise ValueError(f"uniform length: low {self.low} > high {self.high}")

    @classmethod
    def fixed(cls, n: int) -> "LengthDist":
        return cls("fixed", mean=int(n))

    @classmethod
    def parse(cls, s: "str | int | LengthDist | dict") -> "LengthDist":
        """`128`, `fixed:128`, `uniform:64,256`, `normal:128,32`, `lognormal:128,0.5`,
        `file:PATH` (or an existing file's path; `file:PATH#output` picks a column)."""
        if isinstance(s, LengthDist):
            return s
        if isinstance(s, dict):
            return cls.from_dict(s)
        if isinstance(s, int):
            return cls.fixed(s)
        text = str(s).strip()
        if text.startswith("file:"):
            return cls.empirical(text[len("file:"):])
        if ":" not in text:
            try:
                return cls.fixed(int(text))
            except ValueError:
                from pathlib import Path

                if Path(text.split("#")[0]).is_file():
                    return cls.empirical(text)
                raise ValueError(f"length {text!r}: not a number, a distribution "
                                 f"(kind:params) or an existing file") from None
        kind, args = text.split(":", 1)
        vals = [float(a) for a in args.split(",") if a.strip()]
        kind = kind.strip()
        try:
            if kind == "fixed":
                return cls.fixed(int(vals[0]))
            if kind == "uniform":
                return cls("uniform", low=int(vals[0]), high=int(vals[1]))
            if kind == "normal":
                return cls("normal", mean=vals[0], std=vals[1])
            if kind == "lognormal":
                return cls("lognormal", mean=vals[0], sigma=vals[1])
        except IndexError:
            raise ValueError(f"length distribution {text!r}: too few parameters") from None
        raise ValueError(f"unknown length distribution {kind!r} (one of {LENGTH_KINDS})")

    @classmethod
    def empirical(cls, spec: str) -> "LengthDist":
        """`PATH` or `PATH#input` / `PATH#output`."""
        path, _, column = spec.strip().partition("#")
        if not path:
            raise ValueError("file: length needs a path (file:lengths.jsonl)")
        d = cls("empirical", path=path, column=column.strip() or None)
        # read (and check) the file now: bad input fails at parse time
        from .length_data import read_lengths

        read_lengths(path)
        if d.column is not None:
            d.values()
        return d

    def values(self, column: str | None = None):
        """empirical: the file's lengths for `column` (default self.column; a one-column file
        serves any)."""
        from .length_data import read_lengths

        cols = read_lengths(self.path)
        want = column or self.column
        if want in cols:
            return cols[want]
        if "values" in cols:
            return cols["values"]
        if want is None and len(cols) == 1:
            return next(iter(cols.values()))
        have = ", ".join(cols)
        raise ValueError(f"length file {self.path} has no {want or 'single'} column "
                         f"(it has: {have}); say file:PATH#input or #output")

    def with_column(self, column: str) -> "LengthDist":
        """An empirical distribution bound to `column` when it names none (else self)."""
        if self.kind != "empirical" or self.column is not None:
            return self
        from dataclasses import replace

        return replace(self, column=column)

    def sample(self, rng, n: int):
        """n integer lengths from numpy Generator `rng`."""
        import numpy as np

        if self.kind == "empirical":
            vals = self.values()
            x = vals[rng.integers(0, len(vals), size=n)].astype(float)
        elif self.kind == "fixed":
            x = np.full(n, float(self.mean))
        elif self.kind == "uniform":
            x = rng.integers(int(self.low), int(self.high) + 1, size=n).astype(float)
        elif self.kind == "normal":
            x = rng.normal(float(self.mean), float(self.std), size=n)
        else:
            sig = float(self.sigma)
            mu = np.log(float(self.mean)) - sig * sig / 2.0
            x = rng.lognormal(mu, sig, size=n)
        x = np.rint(x)
        hi = self.max if self.max is not None else np.inf
        return np.clip(x, self.min, hi).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "LengthDist":
        return cls(**d)


@dataclass
class WorkloadSpec:
    """What is sent. `kind` (one of WORKLOAD_KINDS) selects the builder in
    `workloads/datasets.build_requests`; the fields each kind reads:

    - synthetic: input_len, output_len, num_requests, shared_prefix_len (every prompt starts
      with the same prefix of that many tokens);
    - sharegpt: dataset_path (a ShareGPT JSON/JSONL file; None = the bundled
      `workloads/data/sample_sharegpt.jsonl`), num_requests (sampled with the seed, cycling when
      the file has fewer), max_output_len (cap on the gpt reply's token count; None = no cap);
      with `output_len_from_dataset=False` the output length is drawn from output_len instead;
    - shared_prefix: num_prefixes (N) groups of prompts; each prompt is one of N prefixes of
      shared_prefix_len tokens followed by its own suffix of input_len tokens. Exactly
      num_requests prompts, spread over the N groups (sizes differ by at most one; fewer groups
      when num_requests < N); with prompts_per_prefix (M) set instead, N groups of M prompts
      (num_requests becomes N*M). Order shuffled with the seed unless shuffle=False;
    - multi_turn: num_requests conversations of num_turns turns (user turns of input_len tokens,
      assistant turns of output_len tokens); turn k's prompt holds turns 0..k-1 (user text and
      a deterministic stand-in for the assistant's answer) then the new user text; turns of a
      conversation are sent in order, each think_time_s after the previous answer's last
      token. With dataset_path set the turns come from ShareGPT conversations instead;
    - trace: dataset_path is a JSONL trace, one `{"timestamp": s, "input_len" | "prompt",
      "output_len"}` per line (output_len missing: drawn from output_len); every line becomes
      a request (the first num_requests when the trace is longer) carrying its timestamp as
      `send_at_s`; a load point with ArrivalSpec(kind="trace", speedup=x) sends them at the
      trace's times (relative to the first, divided by x).

    All kinds: endpoint ("completions" | "chat"), ignore_eos, temperature, seed. Same spec,
    seed and tokenizer -> the same requests, bit for bit."""

    kind: str = "synthetic"
    input_len: LengthDist = field(default_factory=lambda: LengthDist.fixed(128))
    output_len: LengthDist = field(default_factory=lambda: LengthDist.fixed(64))
    num_requests: int = 100
    seed: int = 0
    endpoint: str = "completions"
    ignore_eos: bool = True
    temperature: float | None = 0.0
    shared_prefix_len: int = 0
    dataset_path: str | None = None
    max_output_len: int | None = None
    output_len_from_dataset: bool = True
    num_prefixes: int = 4
    prompts_per_prefix: int | None = None
    shuffle: bool = True
    num_turns: int = 3
    think_time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            raise ValueError(f"workload kind must be one of {WORKLOAD_KINDS}, not {self.kind!r}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, not {self.endpoint!r}")
        self.input_len = LengthDist.parse(self.input_len).with_column("input")
        self.output_len = LengthDist.parse(self.output_len).with_column("output")
        if self.dataset_path is not None:
            self.dataset_path = str(self.dataset_path)
        if self.kind == "shared_prefix":
            if self.num_prefixes < 1:
                raise ValueError("shared_prefix needs num_prefixes >= 1")
            if self.prompts_per_prefix is not None:
                if self.prompts_per_prefix < 1:
                    raise ValueError("shared_prefix needs prompts_per_prefix >= 1 (or None)")
                self.num_requests = self.num_prefixes * self.prompts_per_prefix
            if self.shared_prefix_len < 1:
                raise ValueError("shared_prefix needs shared_prefix_len >= 1 (the prefix length)")
        if self.kind == "trace" and not self.dataset_path:
            raise ValueError("trace workload needs dataset_path (a JSONL trace file)")
        if self.num_requests < 1:
            raise ValueError("num_requests must be >= 1")
        if self.shared_prefix_len < 0:
            raise ValueError("shared_prefix_len must be >= 0")
        if self.num_turns < 1:
            raise ValueError("num_turns must be >= 1")
        if self.think_time_s < 0:
            raise ValueError("think_time_s must be >= 0")
        if self.max_output_len is not None and self.max_output_len < 1:
            raise ValueError("max_output_len must be >= 1")

    def sample_lengths(self, rng, n: int):
        """(n_input, n_output) for n requests from numpy Generator `rng`: input then output
        drawn independently, or, when both are the same two-column empirical file, n rows of
        it drawn once (pairs kept). Every builder that sends these lengths and the simulator
        call this, so the same seed gives the same lengths."""
        a, b = self.input_len, self.output_len
        if (a.kind == b.kind == "empirical" and a.path == b.path and a.column != b.column
                and a.min == b.min == 1 and a.max is None and b.max is None):
            from .length_data import read_lengths

            cols = read_lengths(a.path)
            if a.column in cols and b.column in cols:
                idx = rng.integers(0, len(cols[a.column]), size=n)
                return cols[a.column][idx].copy(), cols[b.column][idx].copy()
        return a.sample(rng, n), b.sample(rng, n)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_len"] = self.input_len.to_dict()
        d["output_len"] = self.output_len.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WorkloadSpec":
        d = dict(d)
        for k in ("input_len", "output_len"):
            if k in d:
                d[k] = LengthDist.parse(d[k])
        return cls(**d)


@dataclass
class ArrivalSpec:
    """poisson / gamma: `rate` (requests/s), gamma `burstiness` (shape; 1 = poisson, < 1 burstier);
    constant: `rate`; concurrency: `concurrency` closed-loop workers, no send schedule;
    trace: the send times are the timestamps of `trace_path` (a JSONL trace; relative to its
    first line, divided by `speedup`), or of the requests' `send_at_s` when they carry them
    (a "trace" workload does)."""

    kind: str = "poisson"
    rate: float | None = None
    concurrency: int | None = None
    burstiness: float = 1.0
    seed: int = 0
    trace_path: str | None = None
    speedup: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"arrival kind must be one of {ARRIVAL_KINDS}, not {self.kind!r}")
        if self.kind == "concurrency":
            if not self.concurrency or self.concurrency < 1:
                raise ValueError("concurrency arrival needs concurrency >= 1")
        elif self.kind == "trace":
            if self.speedup <= 0:
                raise ValueError("trace arrival needs speedup > 0")
        elif not self.rate or self.rate <= 0:
            raise ValueError(f"{self.kind} arrival needs rate > 0")
        if self.burstiness <= 0:
            raise ValueError("burstiness must be > 0")

    @property
    def closed_loop(self) -> bool:
        return self.kind == "concurrency"

    def label(self) -> str:
        if self.kind == "concurrency":
            return f"c{self.concurrency}"
        if self.kind == "trace":
            return "trace" if self.speedup == 1.0 else f"trace-x{self.speedup:g}"
        return f"{self.kind}-{self.rate:g}rps"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ArrivalSpec":
        return cls(**d)


@dataclass
class LoadPoint:
    name: str
    arrival: ArrivalSpec

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arrival": self.arrival.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "LoadPoint":
        arr = d["arrival"]
        return cls(name=d["name"],
                   arrival=arr if isinstance(arr, ArrivalSpec) else ArrivalSpec.from_dict(arr))


def load_point_info(spec: Mapping | None) -> dict[str, dict[str, Any]]:
    """Load point name -> {"arrival_kind", "rate_rps", "concurrency"} from a spec.json dict
    (`spec["load_points"]`: [{name, arrival: {kind, rate, concurrency, ...}}] as `LoadPoint.to_dict`
    writes them). `rate_rps` is the offered rate of an open-loop arrival (None for closed-loop and
    trace load points); a field the arrival lacks is None; entries without a name are skipped."""
    out: dict[str, dict[str, Any]] = {}
    for lp in (spec or {}).get("load_points") or []:
        if not isinstance(lp, Mapping) or lp.get("name") is None:
            continue
        arr = lp.get("arrival")
        arr = arr if isinstance(arr, Mapping) else {}
        out[str(lp["name"])] = {"arrival_kind": arr.get("kind"), "rate_rps": arr.get("rate"),
                                "concurrency": arr.get("concurrency")}
    return out


@dataclass
class SLO:
    """Latency bounds in seconds; None = not tested."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SLO | None":
        return None if d is None else cls(**d)
