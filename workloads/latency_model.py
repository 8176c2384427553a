"""Latency model of one engine instance: the time of one forward step, and the KV cache size.

Role in the data flow: `workloads/profiler.py` fits a `LatencyModel` from engine step traces
(`GET /debug/steps` of a running engine server, or `steps.jsonl` of a results dir) and saves it as
a JSON profile; `workloads/simulator.py` asks it how long each simulated step takes and how many
bytes a request's KV cache is; `workloads/planner.py` plans deployments with it. Pure numpy, no
engine import.

Step-time form (seconds; one forward pass over a mixed batch):

    t = a + b*P + c*P^2/1e3 + d*D + e*C

    P  prefill tokens computed in the step (all prefill chunks together)
    D  decode sequences in the step (one token each)
    C  context tokens attended (KV tokens read by the decodes, plus the already-computed prefix
       of each prefill chunk)
    a  fixed cost per step (weights streamed once, launch overheads)         [s]
    b  per prefill token (the GEMMs)                                         [s / token]
    c  attention among prefill tokens, quadratic (P^2/1e3 keeps c readable)  [s / (token^2/1e3)]
    d  per decode sequence (its GEMM rows, sampling)                         [s / seq]
    e  per attended context token (reading the KV cache)                     [s / token]

All coefficients are >= 0 (fitted by non-negative least squares). When the step rows carry no
context-token count, `e` cannot be identified and is fitted as 0 (the `d` term absorbs it).

KV: `kv_bytes_per_token` (all layers, K and V) and `num_layers`; a layer-wise transfer exposes
`layer_fraction = 1/num_layers` of it. `kv_capacity_tokens` is how many tokens of KV fit one
instance (None: unlimited).

Profile JSON (format "infer-bench-latency-profile", version 1), writable by hand from published
numbers (see workloads/data/profile_example_h100_llama8b.json):

    {"format": "infer-bench-latency-profile", "version": 1,
     "hardware": {"name": "...", "chips_per_instance": 1, ...free-form...},
     "model": {"name": "...", "num_layers": 32, ...free-form...},
     "step_time": {"form": "t = a + b*P + c*P^2/1e3 + d*D + e*C",
                   "a_s": 0.006, "b_s_per_prefill_token": 4e-5,
                   "c_s_per_prefill_token_sq_1e3": 7e-7, "d_s_per_decode_seq": 2e-5,
                   "e_s_per_context_token": 4e-8},
     "kv": {"bytes_per_token": 131072, "num_layers": 32, "capacity_tokens": 400000,
            "block_size": 16},
     "fit": {...how it was obtained: n_rows, r2, median_rel_err...} | null,
     "notes": "..."}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

PROFILE_FORMAT = "infer-bench-latency-profile"
PROFILE_VERSION = 1
FORM = "t = a + b*P + c*P^2/1e3 + d*D + e*C"
COEF_KEYS = {"a": "a_s", "b": "b_s_per_prefill_token", "c": "c_s_per_prefill_token_sq_1e3",
             "d": "d_s_per_decode_seq", "e": "e_s_per_context_token"}
# names a step row may use for its context-token count
CONTEXT_KEYS = ("n_context_tokens", "context_tokens", "n_ctx_tokens", "num_context_tokens")


class ProfileError(ValueError):
    """An invalid profile file or unusable step rows (one-line message)."""


@dataclass
class LatencyModel:
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    d: float = 0.0
    e: float = 0.0
    kv_bytes_per_token: float = 0.0
    num_layers: int = 1
    kv_capacity_tokens: int | None = None
    block_size: int = 16
    hardware: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    fit: dict | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        for k in "abcde":
            v = float(getattr(self, k))
            if v < 0 or math.isnan(v):
                raise ProfileError(f"step-time coefficient {k} must be >= 0, got {v}")
            setattr(self, k, v)
        if self.num_layers < 1:
            raise ProfileError("num_layers must be >= 1")

    # -- step time
    def step_time(self, prefill_tokens: float, decode_seqs: float,
                  context_tokens: float = 0.0) -> float:
        """Seconds of one step with P prefill tokens, D decode seqs, C context tokens."""
        p = float(prefill_tokens)
        return (self.a + self.b * p + self.c * p * p / 1e3 + self.d * decode_seqs
                + self.e * context_tokens)

    def step_time_array(self, prefill_tokens, decode_seqs, context_tokens=None) -> np.ndarray:
        p = np.asarray(prefill_tokens, dtype=float)
        t = self.a + self.b * p + self.c * p * p / 1e3 + self.d * np.asarray(decode_seqs, float)
        if context_tokens is not None:
            t = t + self.e * np.asarray(context_tokens, dtype=float)
        return t

    @property
    def coefficients(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in "abcde"}

    # -- KV
    @property
    def layer_fraction(self) -> float:
        """Share of a request's KV bytes in one layer (what a layer-wise transfer exposes)."""
        return 1.0 / self.num_layers

    def kv_bytes(self, n_tokens: float) -> float:
        return float(n_tokens) * self.kv_bytes_per_token

    @property
    def chips_per_instance(self) -> int:
        return int(self.hardware.get("chips_per_instance", 1) or 1)

    # -- JSON
    def to_dict(self) -> dict[str, Any]:
        st = {"form": FORM}
        st.update({COEF_KEYS[k]: getattr(self, k) for k in "abcde"})
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
                "hardware": dict(self.hardware), "model": dict(self.model), "step_time": st,
                "kv": {"bytes_per_token": self.kv_bytes_per_token, "num_layers": self.num_layers,
                       "capacity_tokens": self.kv_capacity_tokens, "block_size": self.block_size},
                "fit": self.fit, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyModel":
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
        return cls(**coefs, kv_bytes_per_token=float(kv.get("bytes_per_token", 0.0) or 0.0),
                   num_layers=int(layers or 1),
                   kv_capacity_tokens=None if cap is None else int(cap),
                   block_size=int(kv.get("block_size", 16) or 16),
                   hardware=dict(d.get("hardware") or {}), model=model, fit=d.get("fit"),
                   notes=str(d.get("notes", "") or ""))

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> "LatencyModel":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ProfileError(f"{p}: no such profile file") from None
        except ValueError as e:
            raise ProfileError(f"{p}: invalid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, KeyError) as e:
            raise ProfileError(f"{p}: invalid profile ({e})") from None

    def describe(self) -> str:
        hw = self.hardware.get("name", "?")
        mdl = self.model.get("name", "?")
        return (f"{mdl} on {hw}: t = {self.a * 1e3:.3g} ms + {self.b * 1e6:.3g} us*P + "
                f"{self.c * 1e6:.3g} us*P^2/1e3 + {self.d * 1e6:.3g} us*D + "
                f"{self.e * 1e9:.3g} ns*C; KV {self.kv_bytes_per_token:.0f} B/token, "
                f"{self.num_layers} layers")


def example_profile_path() -> Path:
    """The illustrative H100 / Llama-3-8B profile shipped with the package."""
    return Path(__file__).parent / "data" / "profile_example_h100_llama8b.json"


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


def step_features(rows: Iterable[Mapping]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(X [n,5] = [1, P, P^2/1e3, D, C], y = wall_s, has_context) from step rows; rows without
    wall_s or with no work are skipped."""
    rows = list(rows)
    ckey = next((k for k in CONTEXT_KEYS if any(_num(r, k) is not None for r in rows)), None)
    X, y = [], []
    for r in rows:
        wall = _num(r, "wall_s")
        p = _num(r, "n_prefill_tokens") or 0.0
        dd = _num(r, "n_decode_seqs") or 0.0
        if wall is None or wall <= 0 or (p <= 0 and dd <= 0):
            continue
        c = (_num(r, ckey) or 0.0) if ckey else 0.0
        X.append([1.0, p, p * p / 1e3, dd, c])
        y.append(wall)
    return np.asarray(X, dtype=float).reshape(-1, 5), np.asarray(y, dtype=float), ckey is not None


def fit_step_rows(rows: Iterable[Mapping], *, kv_bytes_per_token: float = 0.0,
                  num_layers: int = 1, kv_capacity_tokens: int | None = None,
                  block_size: int = 16, hardware: dict | None = None,
                  model: dict | None = None, notes: str = "",
                  use_context: bool | None = None) -> LatencyModel:
    """Fit the step-time coefficients to engine step rows (dicts with wall_s, n_prefill_tokens,
    n_decode_seqs and optionally a context-token count) by non-negative least squares with
    columns scaled to unit norm. Pure function. Raises ProfileError when there are too few rows.
    The fit quality lands in `model.fit` (n_rows, r2, median and p90 relative error)."""
    X, y, has_ctx = step_features(rows)
    if use_context is None:
        use_context = has_ctx
    if len(y) < 3:
        raise ProfileError(f"need at least 3 step rows with wall_s and work to fit, got {len(y)}")
    cols = [0, 1, 2, 3] + ([4] if use_context else [])
    A = X[:, cols]
    active = [i for i, ci in enumerate(cols) if ci == 0 or np.any(A[:, i] != 0)]
    A = A[:, active]
    # weight rows by 1/y so small steps (decode) count as much as big prefills (relative error)
    wgt = 1.0 / np.maximum(y, 1e-9)
    Aw = A * wgt[:, None]
    yw = y * wgt
    scale = np.linalg.norm(Aw, axis=0)
    scale[scale == 0] = 1.0
    sol = nnls(Aw / scale, yw) / scale
    coef = np.zeros(5)
    for i, s in zip(active, sol):
        coef[cols[i]] = s
    pred = X @ coef
    resid = y - pred
    ss_tot = float(((y - y.mean()) ** 2).sum())
    rel = np.abs(resid) / np.maximum(y, 1e-12)
    fit = {"n_rows": int(len(y)), "r2": (1.0 - float((resid ** 2).sum()) / ss_tot)
           if ss_tot > 0 else None,
           "median_rel_err": float(np.median(rel)), "p90_rel_err": float(np.percentile(rel, 90)),
           "context_term": bool(use_context),
           "ranges": {"prefill_tokens": [float(X[:, 1].min()), float(X[:, 1].max())],
                      "decode_seqs": [float(X[:, 3].min()), float(X[:, 3].max())]}}
    return LatencyModel(a=coef[0], b=coef[1], c=coef[2], d=coef[3], e=coef[4],
                        kv_bytes_per_token=kv_bytes_per_token, num_layers=num_layers,
                        kv_capacity_tokens=kv_capacity_tokens, block_size=block_size,
                        hardware=dict(hardware or {}), model=dict(model or {}), fit=fit,
                        notes=notes)
