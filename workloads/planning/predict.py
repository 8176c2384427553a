"""Predicted vs measured for a results dir: fit, re-simulate, write predictions.json.

Role in the data flow: `infer-bench run` calls `write_predictions(out)` when the run ends, and
`infer-bench report DIR` calls it when DIR has no predictions.json, both before rendering; the
report's "predicted vs measured" section reads the file (workloads.results.load_predictions)
like every other file of the results dir, so `reports/` never runs planning code.

    predict_results_dir(dir) -> (rows | None, note, seconds) | None
    write_predictions(dir, overwrite=True) -> Path | None

The step-time model is fitted to steps.jsonl per deployment (`profiler.fit_results_dir(dir,
deployment=...)`: each deployment's own steps, as disagg workers run fewer threads each;
deployments without enough steps get the first mono deployment's model) and
`planner.validate(dir, models)` re-simulates every measured (deployment, load point) with the
measured requests. A run without engine step traces gets no file (nothing to fit); any failure
of the fit or the simulation becomes the file's note, with no rows, so the report says why.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..results import PREDICTIONS_FILE, ResultsError, load_results, save_predictions
from . import planner, profiler


def predict_results_dir(results_dir: str | Path) -> tuple[list[dict] | None, str, float] | None:
    """(rows, note, seconds) of predicted vs measured for a results dir; None when it has no
    engine step traces (or is not a readable results dir). Never raises for a failed fit or
    simulation: rows is None and the note says what failed."""
    path = Path(results_dir)
    try:
        res = load_results(path)
    except ResultsError:
        return None
    steps = res.steps
    if steps is None or steps.empty:
        return None
    t0 = time.perf_counter()
    try:
        lm = profiler.fit_results_dir(path, heldout=False)
        models = {}
        deps = steps["deployment"].astype(str).unique() if "deployment" in steps else []
        for dep in deps:        # each deployment's own steps (disagg workers run 1 thread each)
            try:
                models[dep] = profiler.fit_results_dir(path, deployment=dep, heldout=False)
            except Exception:  # noqa: BLE001 - too few steps: the default model below
                pass
        names = ({str(n) for n in res.records["deployment"].unique()}
                 if "deployment" in res.records else set())
        for name in names:
            models.setdefault(name, lm)
        rows = planner.validate(path, models if models else lm)
    except Exception as exc:  # the report must render whatever happens here
        return (None, f"Predicted vs measured could not be computed "
                      f"({type(exc).__name__}: {str(exc)[:300]}).", time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    per = []
    for dep, m in models.items():
        f = m.fit or {}
        if m is lm and dep not in deps:
            continue
        per.append(f"{dep}: {f.get('n_rows', '?')} steps, median relative step error "
                   f"{f.get('median_rel_err', float('nan')):.1%}"
                   + (f", x{1 + m.colocated_slowdown:.2f} while another worker steps"
                      if m.colocated_slowdown else ""))
    note = ("Step-time model fitted per deployment to this run's own engine steps ("
            + "; ".join(per) + ")" if per else "Step-time model fitted to this run's steps")
    note += (f"; re-simulated every load point in {dt:.1f} s (in-sample: the held-out "
             f"validation is bench/planner_validation.py).")
    if rows is None or len(rows) == 0:
        return None, "The latency model predicted no load points.", dt
    return rows.to_dict("records"), note, dt


def write_predictions(results_dir: str | Path, overwrite: bool = True) -> Path | None:
    """Compute predicted vs measured and write predictions.json into the results dir; returns
    its path, or None when the run has nothing to fit (no file then). With overwrite=False an
    existing predictions.json is kept as it is."""
    path = Path(results_dir)
    if not overwrite and (path / PREDICTIONS_FILE).exists():
        return path / PREDICTIONS_FILE
    pred = predict_results_dir(path)
    if pred is None:
        return None
    rows, note, seconds = pred
    return save_predictions(path, rows, note=note, seconds=seconds)
