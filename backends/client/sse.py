"""Server-sent-events line splitting over timed body pieces.

Role in the data flow: `backends/http_client.py` keeps a streamed body as `(perf_counter_ns,
bytes)` pieces, one per socket read; `backends/openai.py` calls `sse_lines(pieces)` after the
stream and parses each `data:` line. A line's time is the time of the read that delivered its
last byte (its newline): the moment the event was complete on the client. A last line without a
newline (a server that closed right after it) gets the time of the last piece.
"""

from __future__ import annotations

from typing import Iterable


def sse_lines(pieces: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """[(t, line)] for every non-empty line (without its b"\\n"; a trailing b"\\r" is kept for
    the caller's strip()), in order."""
    out: list[tuple[int, bytes]] = []
    append = out.append
    carry = b""
    t_last = 0
    for t, chunk in pieces:
        t_last = t
        if carry:
            chunk = carry + chunk
        elif chunk[-2:] == b"\n\n" and chunk.find(b"\n") == len(chunk) - 2:
            if len(chunk) > 2 and chunk != b"\r\n\n":   # the common case: one whole event
                append((t, chunk[:-2]))
            continue
        if b"\n" not in chunk:
            carry = chunk
            continue
        *lines, carry = chunk.split(b"\n")
        for ln in lines:
            if ln and ln != b"\r":
                append((t, ln))
    if carry.strip():
        append((t_last, carry))
    return out
