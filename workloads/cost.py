"""Cost per token and per good request from a price per chip-hour (pure arithmetic).

Role in the data flow: `infer-bench run --price-per-chip-hour USD` stores the price in spec.json
(`price_per_chip_hour`); `workloads/results.py` `compute_summary` adds the cost columns when
spec.json has a price, and `reports/` recomputes them with `add_cost_columns` (so `report` and
`compare` can be given another price). Chips come from spec.json, per deployment.

Per deployment x load point (pooled over repeats: summed seconds, tokens and requests):
    $ per million output tokens = price * chips * wall_s / 3600 / output_tokens * 1e6
    $ per request at the SLO    = price * chips * wall_s / 3600 / requests that met the SLO
`wall_s` is the load point's wall time as the runner measured it around the load (summary column
`load_wall_s`), `output_tokens` the output tokens of its successful requests (`load_output_tokens`),
and the requests that met the joint SLO are counted from the intended send time
(`load_slo_met`), all over the whole load point (ramp-up included), like the chips' time. No
token (no good request): infinite cost, stored as None in the summary (JSON has no infinity).
"""

from __future__ import annotations

import math
from typing import Any, Mapping
from .metrics import finite_or_none

COST_COLUMNS = ("chips", "usd_per_m_output_tokens", "usd_per_slo_request")

__all__ = ["COST_COLUMNS", "validate_price", "chip_hours", "usd_per_million_output_tokens",
           "usd_per_slo_request", "chips_by_deployment", "price_of", "add_cost_columns"]


def validate_price(value: Any) -> float:
    """A price per chip-hour as a positive finite float; ValueError (one line) otherwise."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"price per chip-hour must be a number of dollars, got {value!r}") from None
    if not math.isfinite(price) or price <= 0:
        raise ValueError(f"price per chip-hour must be a positive number of dollars, got {value!r}")
    return price


def chip_hours(chips: Any, wall_s: Any) -> float | None:
    """chips x wall seconds / 3600; None when either is unknown."""
    c, s = finite_or_none(chips), finite_or_none(wall_s)
    if c is None or s is None or c <= 0 or s < 0:
        return None
    return c * s / 3600.0


def usd_per_million_output_tokens(price: Any, chips: Any, wall_s: Any,
                                  output_tokens: Any) -> float | None:
    """$ per million output tokens; math.inf when no token was produced, None when unknown."""
    ch, p, n = chip_hours(chips, wall_s), finite_or_none(price), finite_or_none(output_tokens)
    if ch is None or p is None or n is None or n < 0:
        return None
    return math.inf if n == 0 else p * ch / n * 1e6


def usd_per_slo_request(price: Any, chips: Any, wall_s: Any, n_met: Any) -> float | None:
    """$ per request that met the SLO; math.inf when none did, None when unknown."""
    ch, p, n = chip_hours(chips, wall_s), finite_or_none(price), finite_or_none(n_met)
    if ch is None or p is None or n is None or n < 0:
        return None
    return math.inf if n == 0 else p * ch / n


def chips_by_deployment(spec: Mapping | None) -> dict[str, int]:
    """deployment name -> chips, from spec.json's deployments (1 where not recorded)."""
    out = {}
    for d in (spec or {}).get("deployments") or []:
        if isinstance(d, Mapping) and d.get("name"):
            out[str(d["name"])] = int(d.get("chips") or 1)
    return out


def price_of(spec: Mapping | None) -> float | None:
    """spec.json's price per chip-hour, or None."""
    return finite_or_none((spec or {}).get("price_per_chip_hour"))


def add_cost_columns(summary, spec: Mapping | None, price: float | None = None):
    """A copy of `summary` (one row per deployment x load point [x repeat]) with `chips`,
    `usd_per_m_output_tokens` and `usd_per_slo_request` (None where infinite or unknown).
    `price`: the price per chip-hour (default: spec.json's); none at all: summary unchanged."""
    price = price if price is not None else price_of(spec)
    if price is None or summary is None or not len(summary) or "deployment" not in summary:
        return summary
    chips = chips_by_deployment(spec)
    s = summary.copy()
    s["chips"] = [chips.get(str(d), 1) for d in s["deployment"]]

    def col(name):
        return s[name] if name in s else [None] * len(s)

    def clean(v):
        return None if v is None or math.isinf(v) else v

    s["usd_per_m_output_tokens"] = [
        clean(usd_per_million_output_tokens(price, c, w, n))
        for c, w, n in zip(s["chips"], col("load_wall_s"), col("load_output_tokens"))]
    s["usd_per_slo_request"] = [
        clean(usd_per_slo_request(price, c, w, n))
        for c, w, n in zip(s["chips"], col("load_wall_s"), col("load_slo_met"))]
    return s
