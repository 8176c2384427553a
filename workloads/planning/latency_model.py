"""Latency model of one engine instance: the time of one forward step, and the KV cache size.

Role in the data flow: `workloads/profiler.py` fits a `LatencyModel` from engine step traces
(`GET /debug/steps` of a running engine server, or `steps.jsonl` of a results dir) and saves it as
a JSON profile; `workloads/planning/simulator.py` asks it how long each simulated step takes and how many
bytes a request's KV cache is; `workloads/planning/planner.py` plans deployments with it. Pure numpy, no
engine import.

Step-time form (seconds; one forward pass over a mixed batch):

    t = a + b*P + c*Q/1e3 + d*D + e*C + f*N

    P  prefill tokens computed in the step (all prefill chunks together)
    Q  sum over the step's prefill chunks of (chunk length)^2 (= P^2 for one chunk): the step
       row's `prefill_sq_tokens`; rows without it (older traces) read Q = P^2/N, exact when
       the N chunks are equal
    D  decode sequences in the step (one token each)
    C  context tokens attended (KV tokens read by the decodes, plus the already-computed prefix
       of each prefill chunk): the step row's `n_context_tokens`
    N  prefill chunks (sequences) in the step: `n_prefill_seqs`, or n_seqs - n_decode_seqs
    a  fixed cost per step (weights streamed once, launch overheads)         [s]
    b  per prefill token (the GEMMs)                                         [s / token]
    c  causal attention within each chunk, quadratic (Q/1e3 keeps c readable) [s / (token^2/1e3)]
    d  per decode sequence (its GEMM rows, sampling)                         [s / seq]
    e  per attended context token (reading the KV cache)                     [s / token]
    f  per prefill chunk (its attention call, first-token sampling, ...)     [s / chunk]

Why Q and not P^2: attention is causal within each sequence, so a step that prefills prompts of
lengths L1 and L2 computes L1^2/2 + L2^2/2 query-key pairs, not (L1 + L2)^2/2 (prompts never
attend to each other); a chunk of length l after a computed prefix of p tokens computes
~l*(l/2 + p) pairs, of which the l^2 part is here and the prefix read is the C term. Charging
c*P^2 would make a batch of N equal prompts cost N times its real attention, which penalises
exactly the batched prefills that prefill-priority and disaggregated prefill instances run
(DistServe's own fits use a + b*sum(L) + c*sum(L^2); `bench/planner_literature.py`). For one
chunk Q = P^2, so c keeps its meaning in profiles fitted before Q existed.

Decode knots: the cost of D decodes need not be linear over a wide range of D (on the CPU
reference engine a decode sequence costs ~35 ms up to ~8 sequences and ~15 ms beyond). With
`decode_knots` k1 < k2 < ... and `decode_slopes` s1, s2, ... the d*D term becomes piecewise
linear: slope d up to k1, s1 from k1 to k2, ..., the last slope beyond the last knot (every slope
>= 0, so the cost never falls as D grows; concave, as here, or convex, e.g. memory-bound ->
compute-bound on a GPU). The fit puts knots at the powers of two inside the decode counts it saw.

Co-location: when the instances of one deployment share a host (the CPU reference engine's
disaggregated workers: processes on the same cores and memory), a step runs slower while another
instance is in a step. `colocated_slowdown` g: such a step takes (1 + g) x the formula (0 when
every instance has its own chips). Fitted from step rows tagged with `worker` by the overlap of
each step with the other workers' steps (see `busy_overlap`).

All coefficients are >= 0 (fitted by non-negative least squares). When the step rows carry no
context-token count, `e` cannot be identified and is fitted as 0 (the `d` term absorbs it).
On the reference CPU engine `f` matters: a prefill step of a few tokens costs several decode
steps (measured: ~0.1 s per prefill chunk vs ~0.02 s per step at 1 thread, smollm2-135m).
Profiles without `f` (older files) read it as 0.

KV: `kv_bytes_per_token` (all layers, K and V) and `num_layers`; a layer-wise transfer exposes
`layer_fraction = 1/num_layers` of it. `kv_capacity_tokens` is how many tokens of KV fit one
instance (None: unlimited).

Parallelism: `tp` (tensor-parallel degree) and `pp` (pipeline stages) of the instance whose steps
the model describes; one instance uses tp * pp chips (`chips_per_instance`). With pp > 1 the step
time is the latency of one micro-batch through all stages (equal stages: each takes t/pp); the
simulator pipelines micro-batches (one per stage time, see simulator.py). Held-out error:
`heldout_rel_err` is the relative error of the mean step time when the fit predicts step rows it
did not see (profiler.heldout_error: contiguous k-fold over the profile's samples); the planner
turns it into a band on each prediction. None: unknown (hand-written or converted profiles).

Profile sets (format "infer-bench-profile-set", version 2; what `infer-bench profile` writes):
step-time fits of one model, one per (engine, tp, pp, role), so a plan can give each role its
own parallelism and engine (`ProfileSet.select`):

    {"format": "infer-bench-profile-set", "version": 2, "engine": "reference",
     "model": {...}, "hardware": {...}, "notes": "...",
     "fits": [{"engine": "vllm" (default: the set's), "tp": 2, "pp": 1,
               "role": null | "prefill" | "decode" (null: either),
               "heldout_error": {"rel_err": 0.04, "method": "..."} | null,
               "profile": {...one single-fit profile, as below...}}, ...]}

`ProfileSet.load` also reads a single-fit profile (version 1, below) as a set of one fit with
tp=1, pp=1 (chips per instance from its hardware block, default 1), so old files keep working.

Single-fit profile JSON (format "infer-bench-latency-profile", version 1), writable by hand from
published numbers (see workloads/data/profile_example_h100_llama8b.json):

    {"format": "infer-bench-latency-profile", "version": 1,
     "hardware": {"name": "...", "chips_per_instance": 1, ...free-form...},
     "model": {"name": "...", "num_layers": 32, ...free-form...},
     "step_time": {"form": "t = a + b*P + c*Q/1e3 + d*D + e*C + f*N",
                   "a_s": 0.006, "b_s_per_prefill_token": 4e-5,
                   "c_s_per_prefill_token_sq_1e3": 7e-7, "d_s_per_decode_seq": 2e-5,
                   "e_s_per_context_token": 4e-8, "f_s_per_prefill_seq": 0.0,
                   "decode_knots": [], "decode_slopes_s_per_seq": [],
                   "colocated_slowdown": 0.0},
     "kv": {"bytes_per_token": 131072, "num_layers": 32, "capacity_tokens": 400000,
            "block_size": 16},
     "fit": {...how it was obtained: n_rows, r2, median_rel_err...} | null,
     "parallel": {"tp": 1, "pp": 1},                       (optional; default 1, 1)
     "heldout_error": {"rel_err": 0.04, "method": "..."},  (optional; default unknown)
     "notes": "..."}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PROFILE_FORMAT = "infer-bench-latency-profile"
PROFILE_VERSION = 1
PROFILE_SET_FORMAT = "infer-bench-profile-set"
PROFILE_SET_VERSION = 2
ROLES = ("prefill", "decode")
FORM = "t = a + b*P + c*Q/1e3 + d*D + e*C + f*N"
# the step row's sum of squared prefill chunk lengths (Q)
PREFILL_SQ_KEY = "prefill_sq_tokens"
COEF_KEYS = {"a": "a_s", "b": "b_s_per_prefill_token", "c": "c_s_per_prefill_token_sq_1e3",
             "d": "d_s_per_decode_seq", "e": "e_s_per_context_token",
             "f": "f_s_per_prefill_seq"}
COEFS = "abcdef"
N_FEATURES = len(COEFS)
# names a step row may use for its context-token count
CONTEXT_KEYS = ("n_context_tokens", "context_tokens", "n_ctx_tokens", "num_context_tokens")


class ProfileError(ValueError):
    """An invalid profile file or unusable step rows (one-line message)."""


def read_profile_json(p: Path) -> Any:
    """A profile file's JSON; a missing file or invalid JSON is a one-line ProfileError."""
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{p}: no such profile file") from None
    except ValueError as e:
        raise ProfileError(f"{p}: invalid JSON ({e})") from None


def write_profile_json(path: str | Path, obj: Mapping) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2) + "\n")
    return p


@dataclass
class LatencyModel:
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    d: float = 0.0
    e: float = 0.0
    f: float = 0.0
    colocated_slowdown: float = 0.0
    decode_knots: tuple = ()
    decode_slopes: tuple = ()
    kv_bytes_per_token: float = 0.0
    num_layers: int = 1
    kv_capacity_tokens: int | None = None
    block_size: int = 16
    hardware: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    fit: dict | None = None
    notes: str = ""
    tp: int = 1
    pp: int = 1
    heldout_rel_err: float | None = None
    heldout_method: str = ""

    def __post_init__(self) -> None:
        self.tp, self.pp = int(self.tp), int(self.pp)
        if self.tp < 1 or self.pp < 1:
            raise ProfileError(f"tp and pp must be >= 1, got tp={self.tp} pp={self.pp}")
        if self.heldout_rel_err is not None:
            h = float(self.heldout_rel_err)
            if h < 0 or math.isnan(h):
                raise ProfileError(f"held-out error must be >= 0, got {h}")
            self.heldout_rel_err = h
        for k in COEFS:
            v = float(getattr(self, k))
            if v < 0 or math.isnan(v):
                raise ProfileError(f"step-time coefficient {k} must be >= 0, got {v}")
            setattr(self, k, v)
        if self.num_layers < 1:
            raise ProfileError("num_layers must be >= 1")
        g = float(self.colocated_slowdown)
        if g < 0 or math.isnan(g):
            raise ProfileError(f"colocated_slowdown must be >= 0, got {g}")
        self.colocated_slowdown = g
        knots = tuple(float(k) for k in self.decode_knots)
        slopes = tuple(float(v) for v in self.decode_slopes)
        if len(knots) != len(slopes):
            raise ProfileError("decode_knots and decode_slopes must have the same length")
        if any(k <= 0 for k in knots) or list(knots) != sorted(set(knots)):
            raise ProfileError(f"decode_knots must be increasing and > 0, got {list(knots)}")
        if any(v < 0 or math.isnan(v) for v in slopes):
            raise ProfileError(f"decode slopes must be >= 0, got {list(slopes)}")
        self.decode_knots, self.decode_slopes = knots, slopes

    def decode_cost(self, decode_seqs: float) -> float:
        """Seconds of the D-dependent part: d*D, piecewise linear at the decode knots."""
        dd = float(decode_seqs)
        if not self.decode_knots or dd <= self.decode_knots[0]:
            return self.d * dd
        t = self.d * self.decode_knots[0]
        ends = self.decode_knots[1:] + (math.inf,)
        for k0, k1, v in zip(self.decode_knots, ends, self.decode_slopes):
            t += v * (min(dd, k1) - k0)
            if dd <= k1:
                break
        return t

    # -- step time
    def step_time(self, prefill_tokens: float, decode_seqs: float,
                  context_tokens: float = 0.0, prefill_seqs: float | None = None,
                  prefill_sq_tokens: float | None = None) -> float:
        """Seconds of one step with P prefill tokens, D decode seqs, C context tokens, N
        prefill chunks (default: 1 when P > 0) and Q = sum of squared chunk lengths (default:
        P^2/N, equal chunks)."""
        p = float(prefill_tokens)
        n = (1.0 if p > 0 else 0.0) if prefill_seqs is None else float(prefill_seqs)
        q = equal_chunks_sq(p, n) if prefill_sq_tokens is None else float(prefill_sq_tokens)
        return (self.a + self.b * p + self.c * q / 1e3 + self.decode_cost(decode_seqs)
                + self.e * context_tokens + self.f * n)

    def step_time_array(self, prefill_tokens, decode_seqs, context_tokens=None,
                        prefill_seqs=None, prefill_sq_tokens=None) -> np.ndarray:
        p = np.asarray(prefill_tokens, dtype=float)
        dd = np.asarray(decode_seqs, float)
        dec = np.vectorize(self.decode_cost, otypes=[float])(dd) if self.decode_knots \
            else self.d * dd
        n = (p > 0).astype(float) if prefill_seqs is None else np.asarray(prefill_seqs, float)
        q = (p * p / np.maximum(n, 1.0) if prefill_sq_tokens is None
             else np.asarray(prefill_sq_tokens, float))
        t = self.a + self.b * p + self.c * q / 1e3 + dec
        if context_tokens is not None:
            t = t + self.e * np.asarray(context_tokens, dtype=float)
        return t + self.f * n

    @property
    def coefficients(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in COEFS}

    # -- KV
    @property
    def layer_fraction(self) -> float:
        """Share of a request's KV bytes in one layer (what a layer-wise transfer exposes)."""
        return 1.0 / self.num_layers

    def kv_bytes(self, n_tokens: float) -> float:
        return float(n_tokens) * self.kv_bytes_per_token

    @property
    def chips_per_instance(self) -> int:
        """Chips of one instance: tp * pp (a single-fit profile's hardware.chips_per_instance
        when it says more, e.g. an old hand-written multi-chip profile)."""
        return max(self.tp * self.pp, int(self.hardware.get("chips_per_instance", 1) or 1))

    # -- JSON
    def to_dict(self) -> dict[str, Any]:
        st = {"form": FORM}
        st.update({COEF_KEYS[k]: getattr(self, k) for k in COEFS})
        st["decode_knots"] = list(self.decode_knots)
        st["decode_slopes_s_per_seq"] = list(self.decode_slopes)
        st["colocated_slowdown"] = self.colocated_slowdown
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
                "hardware": dict(self.hardware), "model": dict(self.model), "step_time": st,
                "kv": {"bytes_per_token": self.kv_bytes_per_token, "num_layers": self.num_layers,
                       "capacity_tokens": self.kv_capacity_tokens, "block_size": self.block_size},
                "fit": self.fit, "parallel": {"tp": self.tp, "pp": self.pp},
                "heldout_error": (None if self.heldout_rel_err is None else
                                  {"rel_err": self.heldout_rel_err,
                                   "method": self.heldout_method}),
                "notes": self.notes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyModel":
        if d.get("format") == PROFILE_SET_FORMAT:
            fits = d.get("fits") or []
            if len(fits) != 1:
                raise ProfileError(f"a profile set of {len(fits)} fits is not one step-time "
                                   f"model (load it with ProfileSet.load)")
            return ProfileSet.from_dict(d).fits[0]
        if d.get("format") not in (None, PROFILE_FORMAT):
            raise ProfileError(f"not a latency profile (format {d.get('format')!r})")
        if int(d.get("version", PROFILE_VERSION)) != PROFILE_VERSION:
            raise ProfileError(f"unsupported profile version {d.get('version')!r}")
        st = d.get("step_time") or {}
        coefs = {}
        for k, name in COEF_KEYS.items():
            v = st.get(name, st.get(k, 0.0))
            coefs[k] = float(v or 0.0)
        kv = d.get("kv") or {}
        model = dict(d.get("model") or {})
        layers = kv.get("num_layers", model.get("num_layers", 1))
        cap = kv.get("capacity_tokens")
        par = d.get("parallel") or {}
        held = d.get("heldout_error") or {}
        return cls(**coefs, colocated_slowdown=float(st.get("colocated_slowdown", 0.0) or 0.0),
                   decode_knots=tuple(st.get("decode_knots") or ()),
                   decode_slopes=tuple(st.get("decode_slopes_s_per_seq") or ()),
                   kv_bytes_per_token=float(kv.get("bytes_per_token", 0.0) or 0.0),
                   num_layers=int(layers or 1),
                   kv_capacity_tokens=None if cap is None else int(cap),
                   block_size=int(kv.get("block_size", 16) or 16),
                   hardware=dict(d.get("hardware") or {}), model=model, fit=d.get("fit"),
                   notes=str(d.get("notes", "") or ""), tp=int(par.get("tp", 1) or 1),
                   pp=int(par.get("pp", 1) or 1),
                   heldout_rel_err=(None if held.get("rel_err") is None
                                    else float(held["rel_err"])),
                   heldout_method=str(held.get("method", "") or ""))

    def save(self, path: str | Path) -> Path:
        return write_profile_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyModel":
        p = Path(path)
        d = read_profile_json(p)
        try:
            return cls.from_dict(d)
        except (TypeError, KeyError) as e:
            raise ProfileError(f"{p}: invalid profile ({e})") from None

    @property
    def engine(self) -> str:
        """The engine whose steps this model describes (model.engine or hardware.engine; "")."""
        return str(self.model.get("engine") or self.hardware.get("engine") or "")

    def label(self) -> str:
        """e.g. "TP2" or "TP2PP2" (with the engine when known: "vllm TP2")."""
        par = f"TP{self.tp}" + (f"PP{self.pp}" if self.pp > 1 else "")
        return f"{self.engine} {par}" if self.engine else par

    def describe(self) -> str:
        hw = self.hardware.get("name", "?")
        mdl = self.model.get("name", "?")
        return (f"{mdl} on {hw}" + (f" ({self.label()})" if self.tp * self.pp > 1 or self.engine
                                   else "") + f": t = {self.a * 1e3:.3g} ms + {self.b * 1e6:.3g} us*P + "
                f"{self.c * 1e6:.3g} us*Q/1e3 + {self.d * 1e6:.3g} us*D"
                + ("".join(f", {v * 1e6:.3g} us beyond {k:g}"
                           for k, v in zip(self.decode_knots, self.decode_slopes))) + " + "
                f"{self.e * 1e9:.3g} ns*C + {self.f * 1e3:.3g} ms*N"
                + (f" (x{1 + self.colocated_slowdown:.3g} while another instance steps)"
                   if self.colocated_slowdown else "") + "; "
                f"KV {self.kv_bytes_per_token:.0f} B/token, "
                f"{self.num_layers} layers")


@dataclass
class ProfileSet:
    """Step-time fits of one model: one LatencyModel per (engine, tp, pp, role).

    Each fit's `tp`, `pp`, `heldout_rel_err` live on its LatencyModel; `roles[i]` says which role
    fit i describes (None: either). `engine` names the set's default engine (a fit's own engine is
    `model.engine`, set from the entry's "engine"). See the module docstring for the JSON."""

    fits: list = field(default_factory=list)            # [LatencyModel]
    roles: list = field(default_factory=list)           # [None | "prefill" | "decode"]
    engine: str = ""
    model: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.roles:
            self.roles = [None] * len(self.fits)
        if len(self.roles) != len(self.fits):
            raise ProfileError("a profile set needs one role (or None) per fit")
        for r in self.roles:
            if r not in (None, *ROLES):
                raise ProfileError(f"fit role must be one of {ROLES} or null, got {r!r}")
        if not self.fits:
            raise ProfileError("a profile set needs at least one fit")
        for lm in self.fits:
            if self.engine and not lm.engine:
                lm.model = {**lm.model, "engine": self.engine}

    @classmethod
    def single(cls, lm: LatencyModel, role: str | None = None) -> "ProfileSet":
        return cls(fits=[lm], roles=[role], engine=lm.engine, model=dict(lm.model),
                   hardware=dict(lm.hardware), notes=lm.notes)

    def add(self, lm: LatencyModel, role: str | None = None) -> None:
        self.fits.append(lm)
        self.roles.append(role)
        self.__post_init__()

    @property
    def engines(self) -> list[str]:
        return sorted({lm.engine for lm in self.fits})

    def options(self, role: str | None = None, engine: str | None = None) -> list[LatencyModel]:
        """The fits usable for `role` (fits for that role or for either), of `engine` (None:
        any), one per (engine, tp, pp): a role-specific fit wins over a generic one."""
        out: dict[tuple, LatencyModel] = {}
        for lm, r in zip(self.fits, self.roles):
            if engine is not None and lm.engine != engine:
                continue
            if r is not None and role is not None and r != role:
                continue
            key = (lm.engine, lm.tp, lm.pp)
            if key not in out or (r is not None and r == role):
                out[key] = lm
        return [out[k] for k in sorted(out)]

    def select(self, tp: int = 1, pp: int = 1, role: str | None = None,
               engine: str | None = None) -> LatencyModel:
        """The fit for `role` at tensor-parallel degree `tp` and `pp` stages (ProfileError
        listing what the set has when there is none)."""
        for lm in self.options(role, engine):
            if lm.tp == int(tp) and lm.pp == int(pp):
                return lm
        have = ", ".join(sorted({f"{lm.label()}" for lm in self.options(role, engine)})) or "none"
        raise ProfileError(f"no step-time fit for TP{tp} PP{pp}"
                           + (f" ({role})" if role else "") + (f" of {engine}" if engine else "")
                           + f" in the profile (it has: {have})")

    def to_dict(self) -> dict[str, Any]:
        fits = []
        for lm, r in zip(self.fits, self.roles):
            prof = lm.to_dict()
            held = prof.pop("heldout_error")
            prof.pop("parallel")
            fits.append({"engine": lm.engine or self.engine, "tp": lm.tp, "pp": lm.pp,
                         "role": r, "heldout_error": held, "profile": prof})
        return {"format": PROFILE_SET_FORMAT, "version": PROFILE_SET_VERSION,
                "engine": self.engine, "model": dict(self.model),
                "hardware": dict(self.hardware), "notes": self.notes, "fits": fits}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProfileSet":
        fmt = d.get("format")
        if fmt in (None, PROFILE_FORMAT):           # an old single-fit profile: tp=1, pp=1
            return cls.single(LatencyModel.from_dict(d))
        if fmt != PROFILE_SET_FORMAT:
            raise ProfileError(f"not a latency profile (format {fmt!r})")
        if int(d.get("version", PROFILE_SET_VERSION)) != PROFILE_SET_VERSION:
            raise ProfileError(f"unsupported profile-set version {d.get('version')!r}")
        engine = str(d.get("engine") or "")
        model = dict(d.get("model") or {})
        fits, roles = [], []
        for i, e in enumerate(d.get("fits") or []):
            if not isinstance(e, Mapping) or not isinstance(e.get("profile"), Mapping):
                raise ProfileError(f"fit {i}: needs a 'profile' object")
            prof = dict(e["profile"])
            prof["parallel"] = {"tp": e.get("tp", 1), "pp": e.get("pp", 1)}
            prof["heldout_error"] = e.get("heldout_error")
            prof.setdefault("format", PROFILE_FORMAT)
            prof["model"] = {**model, **(prof.get("model") or {}),
                             "engine": str(e.get("engine") or engine)}
            if not prof["model"]["engine"]:
                prof["model"].pop("engine")
            prof.setdefault("hardware", dict(d.get("hardware") or {}))
            fits.append(LatencyModel.from_dict(prof))
            roles.append(e.get("role"))
        return cls(fits=fits, roles=roles, engine=engine, model=model,
                   hardware=dict(d.get("hardware") or {}), notes=str(d.get("notes", "") or ""))

    def save(self, path: str | Path) -> Path:
        return write_profile_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ProfileSet":
        p = Path(path)
        d = read_profile_json(p)
        if not isinstance(d, Mapping):
            raise ProfileError(f"{p}: a profile is a JSON object")
        try:
            return cls.from_dict(d)
        except (TypeError, KeyError, ValueError) as e:
            if isinstance(e, ProfileError):
                raise ProfileError(f"{p}: {e}") from None
            raise ProfileError(f"{p}: invalid profile ({e})") from None

    def describe(self) -> str:
        return (f"{self.model.get('name', '?')}: "
                + ", ".join(lm.label() + (f" ({r})" if r else "")
                            for lm, r in zip(self.fits, self.roles)))


def example_profile_path() -> Path:
    """The illustrative H100 / Llama-3-8B profile shipped with the package."""
    return Path(__file__).parent.parent / "data" / "profile_example_h100_llama8b.json"


# ------------------------------------------------------------------------------ fitting

def nnls(A: np.ndarray, y: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares min ||A x - y|| s.t. x >= 0 (Lawson-Hanson active set)."""
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = A.T @ (y - A @ x)
    tol = 1e-10 * max(1.0, float(np.abs(A).max(initial=0.0))) * max(m, n)
    it = 0
    max_iter = max_iter or 3 * n + 10
    while (~passive).any() and (w[~passive] > tol).any() and it < max_iter:
        it += 1
        j = np.argmax(np.where(~passive, w, -np.inf))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], y, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        w = A.T @ (y - A @ x)
    return x


def _num(row: Mapping, key: str) -> float | None:
    v = row.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def busy_overlap(rows: Sequence[Mapping]) -> np.ndarray:
    """Per row, the fraction of its step [t_start, t_start + wall_s] during which ANOTHER worker
    (rows tagged with different `worker` values, one deployment, one clock) was in a step.
    All zeros when the rows come from fewer than two workers."""
    n = len(rows)
    out = np.zeros(n)
    workers: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        if _num(r, "t_start") is None or _num(r, "wall_s") is None:
            continue
        workers.setdefault(r.get("worker"), []).append(i)
    if len(workers) < 2:
        return out
    for w, idx in workers.items():
        others = sorted((_num(rows[j], "t_start"), _num(rows[j], "t_start") + _num(rows[j], "wall_s"))
                        for v, js in workers.items() if v != w for j in js)
        merged: list[list[float]] = []
        for a, b in others:                       # union of the other workers' busy intervals
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        starts = np.array([m[0] for m in merged])
        ends = np.array([m[1] for m in merged])
        cum = np.concatenate([[0.0], np.cumsum(ends - starts)])

        def covered(t: float) -> float:       # busy time of the others in (-inf, t]
            k = int(np.searchsorted(starts, t, side="right"))
            if k == 0:
                return 0.0
            return float(cum[k - 1] + min(t, ends[k - 1]) - starts[k - 1])

        for i in idx:
            t0 = _num(rows[i], "t_start")
            wall = _num(rows[i], "wall_s")
            if wall > 0:
                out[i] = min(1.0, max(0.0, (covered(t0 + wall) - covered(t0)) / wall))
    return out


def equal_chunks_sq(prefill_tokens: float, prefill_seqs: float) -> float:
    """Q of a step whose P prefill tokens are N equal chunks: P^2/N (P^2 for N <= 1)."""
    p = float(prefill_tokens)
    return p * p / max(float(prefill_seqs), 1.0)


def step_features(rows: Sequence[Mapping], overlap: Sequence[float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
    """(X [n,6] = [1, P, Q/1e3, D, C, N], y = wall_s, has_context, busy overlap) from step
    rows; rows without wall_s or with no work are skipped. N (prefill chunks) is the row's
    `n_prefill_seqs`, else n_seqs - n_decode_seqs, else 1 when the step has prefill tokens.
    Q (sum of squared chunk lengths) is the row's `prefill_sq_tokens`, else P^2/N (older rows:
    exact when the step's chunks are equal, P^2 for one chunk).
    `overlap`: each row's busy overlap when known from a larger set of rows (default: computed
    from `rows` by busy_overlap)."""
    ckey = next((k for k in CONTEXT_KEYS if any(_num(r, k) is not None for r in rows)), None)
    overlap = busy_overlap(rows) if overlap is None else np.asarray(overlap, dtype=float)
    X, y, ov = [], [], []
    for r, o in zip(rows, overlap):
        wall = _num(r, "wall_s")
        p = _num(r, "n_prefill_tokens") or 0.0
        dd = _num(r, "n_decode_seqs") or 0.0
        if wall is None or wall <= 0 or (p <= 0 and dd <= 0):
            continue
        c = (_num(r, ckey) or 0.0) if ckey else 0.0
        n = _num(r, "n_prefill_seqs")
        if n is None:
            ns = _num(r, "n_seqs")
            n = ns - dd if ns is not None else None
        if n is None or n < 0 or (p > 0 and n < 1):
            n = 1.0 if p > 0 else 0.0
        q = _num(r, PREFILL_SQ_KEY) if p > 0 else 0.0
        if q is None or q < 0:
            q = equal_chunks_sq(p, n)
        X.append([1.0, p, q / 1e3, dd, c, 0.0 if p <= 0 else n])
        y.append(wall)
        ov.append(o)
    return (np.asarray(X, dtype=float).reshape(-1, N_FEATURES), np.asarray(y, dtype=float),
            ckey is not None, np.asarray(ov, dtype=float))


def _weighted_nnls(A: np.ndarray, y: np.ndarray, wgt: np.ndarray) -> np.ndarray:
    """NNLS of rows weighted by wgt, columns scaled to unit norm (conditioning)."""
    Aw = A * wgt[:, None]
    yw = y * wgt
    scale = np.linalg.norm(Aw, axis=0)
    scale[scale == 0] = 1.0
    return nnls(Aw / scale, yw) / scale


def fit_coefficients(X: np.ndarray, y: np.ndarray, cols: list[int], *,
                     outlier_ratio: float = 2.5, iterations: int = 3
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (length N_FEATURES; columns not in `cols` are 0) and the kept-row mask.

    Relative-error least squares that targets the MEAN step time: rows are first weighted by
    1/y, then (iteratively) by 1/prediction. Weighting by 1/y alone under-predicts when the noise
    is right-skewed (a slow step gets less weight than a fast one) -- and a request's TPOT or
    TTFT is a sum of step times, so the mean is what the simulator needs. Rows more than
    `outlier_ratio` times off the first fit (cold first steps, a stalled process) are dropped."""
    A = X[:, cols]
    active = [i for i, ci in enumerate(cols) if ci == 0 or np.any(A[:, i] != 0)]
    A = A[:, active]
    keep = np.ones(len(y), dtype=bool)
    wgt = 1.0 / np.maximum(y, 1e-9)
    sol = _weighted_nnls(A, y, wgt)
    if outlier_ratio and len(y) >= 10:
        pred = np.maximum(A @ sol, 1e-9)
        ratio = y / pred
        keep = (ratio < outlier_ratio) & (ratio > 1.0 / outlier_ratio)
        if keep.sum() < max(3, len(y) // 2):
            keep[:] = True
    for _ in range(iterations):
        pred = np.maximum(A @ sol, 1e-6 * float(np.median(y)))
        sol = _weighted_nnls(A[keep], y[keep], 1.0 / pred[keep])
    coef = np.zeros(X.shape[1])
    for i, v in zip(active, sol):
        coef[cols[i]] = v
    return coef, keep


def fit_step_rows(rows: Iterable[Mapping], *, kv_bytes_per_token: float = 0.0,
                  num_layers: int = 1, kv_capacity_tokens: int | None = None,
                  block_size: int = 16, hardware: dict | None = None,
                  model: dict | None = None, notes: str = "",
                  use_context: bool | None = None, use_prefill_seqs: bool = True,
                  outlier_ratio: float = 2.5, fit_colocation: bool = True,
                  fit_knots: bool = True) -> LatencyModel:
    """Fit the step-time coefficients to engine step rows (dicts with wall_s, n_prefill_tokens,
    n_decode_seqs and optionally n_context_tokens, n_prefill_seqs / n_seqs and
    prefill_sq_tokens) by non-negative
    least squares on relative errors (`fit_coefficients`). Pure function. Raises ProfileError
    when there are too few rows. The fit quality lands in `model.fit` (n_rows, n_dropped, r2,
    median and p90 relative error, mean ratio = sum(measured) / sum(predicted)). Rows of several
    co-located workers (tagged `worker`, e.g. a disaggregated deployment's /debug/steps) also fit
    `colocated_slowdown` (fit_colocation=False: keep it 0). The decode term is piecewise linear
    with knots at the powers of two (from 2) inside the data when that lowers the mean squared
    relative error by 5% or more (fit_knots=False: linear in D)."""
    X, y, has_ctx, ov = step_features(list(rows))
    if use_context is None:
        use_context = has_ctx
    if len(y) < 3:
        raise ProfileError(f"need at least 3 step rows with wall_s and work to fit, got {len(y)}")
    cols = [0, 1, 2, 3] + ([4] if use_context else []) + ([5] if use_prefill_seqs else [])

    # decode knots: the powers of two inside the decode counts seen (enough steps beyond each)
    dvals = X[:, 3]
    knots: list[float] = []
    if fit_knots:   # from 2: the first segment's slope d must be told apart from the intercept
        k = 2.0
        while k < dvals.max():
            if (dvals > k).sum() >= max(5, len(y) // 100) and (dvals[dvals > 0] <= k).sum() >= 5:
                knots.append(k)
            k *= 2
    ends = knots[1:] + [np.inf]
    extra = [np.clip(dvals - k0, 0.0, k1 - k0) for k0, k1 in zip(knots, ends)]
    Xd = np.column_stack([X[:, :3], np.minimum(dvals, knots[0]) if knots else dvals, X[:, 4:],
                          *extra]) if knots else X
    kcols = cols + list(range(N_FEATURES, N_FEATURES + len(knots)))

    def loss(coef_, keep_, g_):
        pr = (Xd[keep_] @ coef_) * (1 + g_ * ov[keep_])
        return float((((y[keep_] - pr) / np.maximum(pr, 1e-12)) ** 2).mean())

    def fit_g(g_):
        return fit_coefficients(Xd * (1 + g_ * ov)[:, None], y, kcols, outlier_ratio=outlier_ratio)

    colocated = fit_colocation and (ov > 0.5).sum() >= 10 and (ov < 0.5).sum() >= 10
    g = 0.0
    coef, keep = fit_g(0.0)
    if knots:   # knots must earn their keep: >= 5% lower loss than linear in D
        lin, lin_keep = fit_coefficients(X, y, cols, outlier_ratio=outlier_ratio)
        pr = X[lin_keep] @ lin
        lin_loss = float((((y[lin_keep] - pr) / np.maximum(pr, 1e-12)) ** 2).mean())
        if loss(coef, lin_keep, 0.0) > 0.95 * lin_loss - 1e-12:   # (exact data: no knots)
            knots, Xd, kcols = [], X, cols
            coef, keep = lin, lin_keep
    if colocated:
        # co-located workers: t = (1 + g*overlap) * formula; g by a grid search
        best = (loss(coef, keep, 0.0), 0.0, coef, keep)
        for g_ in np.arange(0.02, 1.0001, 0.02):
            c_, k_ = fit_g(float(g_))
            lo = loss(c_, keep, float(g_))
            if lo < best[0]:
                best = (lo, float(g_), c_, k_)
        _, g, coef, keep = best
    Xk, yk = Xd[keep], y[keep]
    pred = (Xk @ coef) * (1 + g * ov[keep])
    resid = yk - pred
    ss_tot = float(((yk - yk.mean()) ** 2).sum())
    rel = np.abs(resid) / np.maximum(yk, 1e-12)
    fit = {"n_rows": int(len(y)), "n_dropped": int((~keep).sum()),
           "r2": (1.0 - float((resid ** 2).sum()) / ss_tot) if ss_tot > 0 else None,
           "median_rel_err": float(np.median(rel)), "p90_rel_err": float(np.percentile(rel, 90)),
           "mean_ratio": float(yk.sum() / max(pred.sum(), 1e-12)),
           "context_term": bool(use_context), "prefill_seq_term": bool(use_prefill_seqs),
           "mean_busy_overlap": float(ov.mean()) if len(ov) else 0.0,
           "ranges": {"prefill_tokens": [float(X[:, 1].min()), float(X[:, 1].max())],
                      "decode_seqs": [float(X[:, 3].min()), float(X[:, 3].max())],
                      "context_tokens": [float(X[:, 4].min()), float(X[:, 4].max())]}}
    return LatencyModel(**dict(zip(COEFS, (float(v) for v in coef[:N_FEATURES]))),
                        colocated_slowdown=g, decode_knots=tuple(knots),
                        decode_slopes=tuple(float(v) for v in coef[N_FEATURES:]),
                        kv_bytes_per_token=kv_bytes_per_token, num_layers=num_layers,
                        kv_capacity_tokens=kv_capacity_tokens, block_size=block_size,
                        hardware=dict(hardware or {}), model=dict(model or {}), fit=fit,
                        notes=notes)
