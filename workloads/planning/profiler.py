"""Profiling: measure an engine's step times and fit a `LatencyModel` (workloads/latency_model.py).

Role in the data flow: `infer-bench profile` calls `profile_engine(url, ...)` against a running
reference-engine server, or `fit_results_dir(dir)` on a results dir that holds engine step traces
(steps.jsonl); both end in `latency_model.fit_step_rows`, the pure core. HTTP only: this module
never imports `backends/engine/`.

`profile_engine` drives a short automatic grid through `POST /v1/completions` (prompts given as
random token ids, so prompt lengths are exact and the prefix cache never hits; `ignore_eos` so
outputs have exactly max_tokens tokens):
  1. prefill-only: one request at a time for each prompt length (max_tokens=1): steps with P
     prefill tokens and no decodes;
  2. decode batches: B concurrent short requests for each batch size B: steps with D decodes;
  3. mixed: B running decodes while one long prompt arrives: steps with both.
It then reads the steps the grid produced from `GET /debug/steps` (`{"steps": [...]}` or a bare
list; rows: step, t_start, wall_s, n_prefill_tokens, n_decode_seqs, n_seqs, blocks_used, and a
context-token count and the sum of squared prefill chunk lengths (`prefill_sq_tokens`) when the
engine reports them; older rows without the latter are read as equal chunks) and fits them.

Model facts for the profile (KV bytes per token, layers) come from the caller (CLI flags), or
from any of /v1/models, /health that report them (num_hidden_layers, num_key_value_heads,
head_dim; dtype bytes default 4 = fp32, the engine's CPU dtype).

Held-out error (`heldout_error(rows)`, pure): the step rows in time order are cut into k = 5
contiguous folds; each fold is predicted by a fit to the other four, and the fold's error is the
relative error of its MEAN step time (sum predicted / sum measured - 1: what a request's TTFT and
TPOT, sums of step times, inherit; per-step noise averages out). The profile's
`heldout_rel_err` is the root mean square of the k fold errors (contiguous folds, unlike random
ones, also catch drift over the profiling run). Both entry points attach it to the model they
return; `as_profile_set(lm, tp, pp, role, engine)` wraps a fit into the profile-set format
that `infer-bench profile` writes.
"""

from __future__ import annotations

import json
import platform
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .latency_model import (LatencyModel, ProfileError, ProfileSet, busy_overlap, fit_step_rows,
                            step_features)

HELDOUT_FOLDS = 5


@dataclass
class ProfileGrid:
    prefill_lens: Sequence[int] = (16, 64, 256, 512, 1024)
    decode_batches: Sequence[int] = (1, 2, 4, 8, 16)
    decode_tokens: int = 16
    mixed_prefill_len: int = 256
    repeats: int = 2

    @classmethod
    def quick(cls) -> "ProfileGrid":
        return cls(prefill_lens=(16, 64, 256), decode_batches=(1, 4), decode_tokens=8,
                   mixed_prefill_len=128, repeats=1)


# ---------------------------------------------------------------------------- HTTP

def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (user-given URL)
        return json.loads(r.read().decode())


def _post_json(url: str, body: dict, timeout: float) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
        return json.loads(r.read().decode())


def fetch_steps(base_url: str, timeout: float = 10.0) -> list[dict]:
    """The engine's step trace from GET /debug/steps."""
    data = _get_json(base_url.rstrip("/") + "/debug/steps", timeout)
    rows = data.get("steps", []) if isinstance(data, dict) else data
    return [r for r in rows if isinstance(r, dict)]


def _find_keys(obj: Any, keys: set[str], out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and isinstance(v, (int, float)) and k not in out:
                out[k] = v
            else:
                _find_keys(v, keys, out)
    elif isinstance(obj, list):
        for v in obj:
            _find_keys(v, keys, out)
    return out


def discover_model(base_url: str) -> dict:
    """Best effort: {"name", and when reported: num_layers, kv_bytes_per_token}."""
    info: dict[str, Any] = {}
    found: dict[str, Any] = {}
    for path in ("/v1/models", "/health"):
        try:
            data = _get_json(base_url.rstrip("/") + path, 5.0)
        except (urllib.error.URLError, OSError, ValueError):
            continue
        if path == "/v1/models" and isinstance(data, dict) and data.get("data"):
            info.setdefault("name", data["data"][0].get("id"))
        _find_keys(data, {"num_hidden_layers", "num_layers", "num_key_value_heads",
                          "num_kv_heads", "head_dim", "dtype_bytes"}, found)
    layers = found.get("num_hidden_layers", found.get("num_layers"))
    kvh = found.get("num_key_value_heads", found.get("num_kv_heads"))
    if layers:
        info["num_layers"] = int(layers)
    if layers and kvh and found.get("head_dim"):
        info["kv_bytes_per_token"] = (2 * int(layers) * int(kvh) * int(found["head_dim"])
                                      * int(found.get("dtype_bytes", 4)))
    return info


# ---------------------------------------------------------------------------- held-out error

def heldout_error(rows: Sequence[dict], *, k: int = HELDOUT_FOLDS, **fit_kw: Any
                  ) -> tuple[float, list[float]] | None:
    """(RMS over folds, per-fold errors) of the mean step time predicted for each of `k`
    contiguous folds of `rows` (time order: t_start when every row has one) by a fit to the
    others; None when there are too few rows (fewer than 6 per fold) or a fold cannot be fitted.
    `fit_kw` goes to fit_step_rows. Pure function."""
    rows = [r for r in rows if isinstance(r, dict)]
    if all(isinstance(r.get("t_start"), (int, float)) for r in rows):
        rows = sorted(rows, key=lambda r: r["t_start"])
    _, y_all, _, _ = step_features(rows)
    if k < 2 or len(y_all) < 6 * k:
        return None
    ov_all = busy_overlap(rows)
    n = len(rows)
    errs = []
    for i in range(k):
        lo, hi = i * n // k, (i + 1) * n // k
        test, train = rows[lo:hi], rows[:lo] + rows[hi:]
        try:
            lm = fit_step_rows(train, **fit_kw)
        except ProfileError:
            return None
        X, y, _, ov = step_features(test, overlap=ov_all[lo:hi])
        if not len(y):
            continue
        pred = lm.step_time_array(X[:, 1], X[:, 3], X[:, 4], X[:, 5], X[:, 2] * 1e3) * (
            1.0 + lm.colocated_slowdown * ov)
        errs.append(float(pred.sum() / y.sum() - 1.0))
    if len(errs) < 2:
        return None
    return float(np.sqrt(np.mean(np.square(errs)))), errs


def with_heldout_error(lm: LatencyModel, rows: Sequence[dict], **fit_kw: Any) -> LatencyModel:
    """`lm` with heldout_rel_err (and the per-fold errors in lm.fit["heldout_fold_errors"]) from
    heldout_error(rows); left unknown when there are too few rows."""
    he = heldout_error(rows, **fit_kw)
    if he is not None:
        lm.heldout_rel_err = he[0]
        lm.heldout_method = (f"{HELDOUT_FOLDS}-fold contiguous (time order) hold-out on the "
                             f"profile's step rows: RMS relative error of each fold's mean "
                             f"step time")
        if lm.fit is not None:
            lm.fit = {**lm.fit, "heldout_fold_errors": he[1]}
    return lm


def as_profile_set(lm: LatencyModel, *, tp: int = 1, pp: int = 1, role: str | None = None,
                   engine: str = "") -> ProfileSet:
    """One fit as a profile set (what `infer-bench profile` writes): the instance measured ran
    with `tp` tensor-parallel chips and `pp` stages; `engine` names the engine (e.g. "reference",
    "vllm")."""
    lm.tp, lm.pp = int(tp), int(pp)
    lm.__post_init__()
    if engine:
        lm.model = {**lm.model, "engine": engine}
    return ProfileSet(fits=[lm], roles=[role], engine=engine or lm.engine,
                      model=dict(lm.model), hardware=dict(lm.hardware), notes=lm.notes)


# ---------------------------------------------------------------------------- probing

def profile_engine(base_url: str, *, grid: ProfileGrid | None = None, model: str | None = None,
                   kv_bytes_per_token: float | None = None, num_layers: int | None = None,
                   kv_capacity_tokens: int | None = None, hardware: dict | None = None,
                   timeout_s: float = 300.0, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> LatencyModel:
    """Run the grid against the engine at `base_url`, fetch the new step rows, fit them."""
    grid = grid or ProfileGrid()
    base = base_url.rstrip("/")
    disc = discover_model(base)
    model = model or disc.get("name")
    if model is None:
        raise ProfileError(f"{base}: no model listed at /v1/models (is it an engine server?)")
    try:
        before = max((int(r.get("step", -1)) for r in fetch_steps(base)), default=-1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ProfileError(f"{base}/debug/steps: {e} (profile needs the reference engine's "
                           f"step trace)") from None
    rng = np.random.default_rng(seed)

    def send(n_prompt: int, max_tokens: int) -> None:
        ids = rng.integers(100, 1000, size=int(n_prompt)).tolist()
        _post_json(base + "/v1/completions",
                   {"model": model, "prompt": ids, "max_tokens": int(max_tokens),
                    "temperature": 0.0, "ignore_eos": True, "stream": False}, timeout_s)

    for rep in range(grid.repeats):
        for n in grid.prefill_lens:
            if progress:
                progress(f"prefill {n} tokens ({rep + 1}/{grid.repeats})")
            send(n, 1)
        for b in grid.decode_batches:
            if progress:
                progress(f"decode batch {b} ({rep + 1}/{grid.repeats})")
            with ThreadPoolExecutor(max_workers=b) as ex:
                list(ex.map(lambda _: send(8, grid.decode_tokens), range(b)))
        for b in grid.decode_batches:
            if progress:
                progress(f"mixed: batch {b} + prefill {grid.mixed_prefill_len} "
                         f"({rep + 1}/{grid.repeats})")
            with ThreadPoolExecutor(max_workers=b + 1) as ex:
                futs = [ex.submit(send, 8, 2 * grid.decode_tokens) for _ in range(b)]
                time.sleep(0.05)
                futs.append(ex.submit(send, grid.mixed_prefill_len, 1))
                for f in futs:
                    f.result()
    rows = [r for r in fetch_steps(base) if int(r.get("step", before + 1)) > before]
    hw = dict(hardware or describe_this_machine())
    kvb = kv_bytes_per_token if kv_bytes_per_token is not None else disc.get("kv_bytes_per_token")
    layers = num_layers if num_layers is not None else disc.get("num_layers")
    notes = (f"measured by infer-bench profile against {base} "
             f"({time.strftime('%Y-%m-%d %H:%M:%S')}); {len(rows)} step rows")
    if kvb is None:
        notes += "; KV bytes per token unknown (set kv.bytes_per_token by hand)"
    lm = fit_step_rows(rows, kv_bytes_per_token=float(kvb or 0.0), num_layers=int(layers or 1),
                       kv_capacity_tokens=kv_capacity_tokens, hardware=hw,
                       model={"name": model, "num_layers": int(layers or 1)}, notes=notes)
    return with_heldout_error(lm, rows)


def describe_this_machine() -> dict:
    """hardware description of this host for a profile (CPU model, cores; GPUs if NVML says)."""
    from ..results import collect_env

    env = collect_env()
    gpus = [g.get("name") for g in env.get("gpus") or [] if g.get("name")]
    name = f"{len(gpus)}x {gpus[0]}" if gpus else f"CPU: {env.get('cpu_model')}"
    return {"name": name, "chips_per_instance": 1, "host": platform.node(),
            "cpu_model": env.get("cpu_model"), "cpu_count": env.get("cpu_count_available"),
            "gpus": gpus}


# ---------------------------------------------------------------------------- results dirs

def steps_from_results(results_dir: str | Path, deployment: str | None = None) -> list[dict]:
    """Step rows of a results dir's steps.jsonl (optionally of one deployment)."""
    p = Path(results_dir) / "steps.jsonl"
    if not p.exists():
        raise ProfileError(f"{results_dir}: no steps.jsonl (run with the reference engine)")
    rows = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if deployment is None or str(r.get("deployment")) == deployment:
                rows.append(r)
    return rows


def load_point_windows(results_dir: str | Path, deployment: str
                       ) -> dict[str, tuple[float, float]]:
    """{load point: (start, end)} of one deployment on the ENGINE's clock (the clock of the step
    rows' t_start): from the first send to the last response of the load point's requests,
    shifted by the median of (server arrival - client send) of its requests (both clocks are
    CLOCK_MONOTONIC of this host, so the shift is the run clock's origin plus the intake latency).
    Load points without server timing are left out."""
    import pandas as pd

    p = Path(results_dir)
    pq, jl = p / "requests.parquet", p / "requests.jsonl"
    if pq.exists():
        df = pd.read_parquet(pq)
    elif jl.exists():
        df = pd.read_json(jl, lines=True)
    else:
        raise ProfileError(f"{results_dir}: no requests.parquet / requests.jsonl")
    df = df[df["deployment"].astype(str) == deployment]
    out: dict[str, tuple[float, float]] = {}
    if "server_timing_json" not in df:
        return out
    for lp, g in df.groupby("load_point", sort=False):
        shifts = []
        for sent, tj in zip(g["send_s"], g["server_timing_json"]):
            try:
                arrival = json.loads(tj).get("arrival") if isinstance(tj, str) else None
            except ValueError:
                arrival = None
            if arrival is not None and sent == sent and sent is not None:
                shifts.append(float(arrival) - float(sent))
        if not shifts:
            continue
        shift = float(np.median(shifts))
        end = g["end_s"].where(g["end_s"].notna(), g["send_s"])
        out[str(lp)] = (float(g["send_s"].min()) + shift, float(end.max()) + shift)
    return out


def steps_of_load_points(results_dir: str | Path, deployment: str,
                         load_points: Sequence[str]) -> list[dict]:
    """The step rows of `deployment` that started while one of `load_points` ran (see
    load_point_windows): fit on some load points of a run, predict the others."""
    windows = load_point_windows(results_dir, deployment)
    missing = [lp for lp in load_points if lp not in windows]
    if missing:
        raise ProfileError(f"{results_dir}: no server timing for load point(s) {missing} of "
                           f"{deployment}")
    spans = [windows[lp] for lp in load_points]
    rows = steps_from_results(results_dir, deployment)
    return [r for r in rows if isinstance(r.get("t_start"), (int, float))
            and any(a <= r["t_start"] <= b for a, b in spans)]


def fit_results_dir(results_dir: str | Path, deployment: str | None = None,
                    load_points: Sequence[str] | None = None, heldout: bool = True,
                    **kw: Any) -> LatencyModel:
    """Fit a LatencyModel to the step rows of a results dir. With no `deployment`, the first
    mono deployment's rows (step times of a disagg worker are role-specific), else all rows.
    `load_points` (needs `deployment`): only the steps run during those load points.
    `kw` goes to fit_step_rows (kv_bytes_per_token, num_layers, hardware, model, ...).
    heldout=False skips the held-out error (k more fits; predict.py does not need it)."""
    if load_points is not None:
        if deployment is None:
            raise ProfileError("fit_results_dir: load_points needs a deployment")
        rows = steps_of_load_points(results_dir, deployment, load_points)
    else:
        rows = steps_from_results(results_dir, deployment)
    if deployment is None:
        spec_p = Path(results_dir) / "spec.json"
        monos = []
        if spec_p.exists():
            try:
                spec = json.loads(spec_p.read_text())
                monos = [d.get("name") for d in spec.get("deployments") or []
                         if d.get("mode", "mono") == "mono"]
            except ValueError:
                pass
        if monos:
            sel = [r for r in rows if r.get("deployment") == monos[0]]
            rows = sel or rows
    if "hardware" not in kw:
        env_p = Path(results_dir) / "env.json"
        try:
            env = json.loads(env_p.read_text()) if env_p.exists() else {}
        except ValueError:
            env = {}
        gpus = [g.get("name") for g in env.get("gpus") or [] if g.get("name")]
        kw["hardware"] = {"name": f"{len(gpus)}x {gpus[0]}" if gpus
                          else f"CPU: {env.get('cpu_model', '?')}", "chips_per_instance": 1,
                          "host": env.get("hostname")}
    kw.setdefault("notes", f"fitted from {results_dir}/steps.jsonl ({len(rows)} rows"
                           + (f" of load points {', '.join(load_points)})" if load_points else ")"))
    lm = fit_step_rows(rows, **kw)
    if heldout:
        fit_kw = {k: v for k, v in kw.items() if k in ("use_context", "use_prefill_seqs",
                                                       "outlier_ratio", "fit_colocation",
                                                       "fit_knots")}
        with_heldout_error(lm, rows, **fit_kw)
    return lm
