"""Flag values the CLI parses itself: comma-separated lists of positive numbers, a price.

Role: shared by the command modules (cli/main.py, cli/plan_cmds.py, cli/extra_cmds.py); a bad
value raises `UserError` naming the flag, which the CLI prints as one line.
"""

from __future__ import annotations

from .errors import UserError


def positive_floats(text: str, flag: str) -> list[float]:
    """`"0.5,1, 2"` -> [0.5, 1.0, 2.0]; empty items are skipped; at least one, all > 0."""
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise UserError(f"{flag} needs positive numbers, got {text!r}")
    return vals


def positive_ints(text: str, flag: str) -> list[int]:
    """`"256,1024"` -> [256, 1024] (fractions truncated: "2.7" -> 2); at least one, all > 0."""
    try:
        vals = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise UserError(f"{flag} needs positive numbers, got {text!r}")
    return vals


def price_per_chip_hour(text: str | None, flag: str = "--price-per-chip-hour") -> float | None:
    """`"2.5"` -> 2.5 (US dollars per chip-hour; None stays None); positive and finite."""
    if text is None:
        return None
    from infer_bench.workloads.cost import validate_price

    try:
        return validate_price(text)
    except ValueError:
        raise UserError(f"{flag} takes a positive number of US dollars per chip-hour, "
                        f"got {text!r}") from None
