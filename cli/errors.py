"""Expected failures and how the CLI words them: one line, no traceback.

Library code raises its own error types (ModelLoadError, DeploymentError, ResultsError, ...); the
CLI recognises them by name, so this module imports none of the heavy libraries.
"""

from __future__ import annotations

import os

EXPECTED = {
    "UserError", "ModelLoadError", "DeploymentError", "ResultsError", "RunError", "RunIncomplete",
    "FileNotFoundError", "NotADirectoryError", "PermissionError", "ValueError",
    "RayUnavailable", "RayShardError",
}


class UserError(Exception):
    """A bad flag value or combination; the message says what to do instead."""


def one_line(exc: BaseException) -> str | None:
    """The message to print for `exc`, or None to let it propagate (set INFER_BENCH_DEBUG=1)."""
    if os.environ.get("INFER_BENCH_DEBUG"):
        return None
    text = " ".join(str(exc).split()) or type(exc).__name__
    if any(cls.__name__ in EXPECTED for cls in type(exc).__mro__):
        return text
    return f"internal error: {type(exc).__name__}: {text} (set INFER_BENCH_DEBUG=1 for a traceback)"
