"""Empirical token lengths read from a file: a dataset's or a trace's lengths, for
`LengthDist(kind="empirical")` (`--input-len file:PATH`, `--output-len file:PATH`).

Role in the data flow: `workloads/spec.py`'s LengthDist reads its file here once (cached by path,
size and modification time); `WorkloadSpec.sample_lengths` draws from the columns, so the
synthetic builder (`workloads/synthetic.py`, what a real run sends) and the simulator
(`workloads/planning/sim_model.spec_lengths`) draw the same lengths from the same seed. Pure
reading, no tokenizer: the counts are the file's own.

Formats (by content, not by extension):
- plain numbers: one length per line (blank lines and lines starting with # skipped): one
  column, usable for either side;
- CSV: a header line naming the columns, then rows; input column `input_len` (or `input`,
  `n_input`, `prompt_len`, `prompt_tokens`, `input_tokens`), output column `output_len` (or
  `output`, `n_output`, `max_tokens`, `completion_tokens`, `output_tokens`);
- JSONL: one object per line with the same keys (or one number per line);
- ShareGPT (JSONL or a JSON list of `{"conversations": [...]}`, read by
  `workloads.datasets.read_sharegpt`): every (user, assistant) pair of every conversation is a
  turn; lengths are whitespace words (no tokenizer here).
Both columns in one file stay paired: a row's input and output are drawn together (a dataset's
lengths are correlated). Multi-turn: rows (CSV/JSONL) carrying a `conversation_id` (or
`conversation`) are the turns of that conversation in file order, and their input is the NEW
user turn; the prompt a client sends for turn k holds the whole history, so the turn's input
length becomes sum(input + output of turns 0..k-1) + input of turn k. ShareGPT conversations
grow the same way.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

INPUT_KEYS = ("input_len", "input", "n_input", "prompt_len", "prompt_tokens", "input_tokens")
OUTPUT_KEYS = ("output_len", "output", "n_output", "max_tokens", "completion_tokens",
               "output_tokens")
CONVERSATION_KEYS = ("conversation_id", "conversation")

_CACHE: dict[tuple, dict[str, np.ndarray]] = {}


class LengthFileError(ValueError):
    """A length file that cannot be used; the message names the file (and line)."""


def read_lengths(path: str | Path) -> dict[str, np.ndarray]:
    """The file's lengths: {"input": ..., "output": ...} (either or both, equal length and
    row-paired), or {"values": ...} for a one-column file. int64 arrays, every value >= 1."""
    p = Path(path)
    if not p.is_file():
        raise LengthFileError(f"length file {p} does not exist")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = _parse(p)
    return _CACHE[key]


def _parse(p: Path) -> dict[str, np.ndarray]:
    text = p.read_text(encoding="utf-8")
    body = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1)
            if ln.strip() and not ln.strip().startswith("#")]
    if not body:
        raise LengthFileError(f"length file {p} has no lengths")
    first = body[0][1]
    if first.startswith("[") or (first.startswith("{") and '"conversations"' in first):
        return _sharegpt(p)
    if first.startswith("{"):
        rows = []
        for lineno, ln in body:
            try:
                obj = json.loads(ln)
            except ValueError as e:
                raise LengthFileError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise LengthFileError(f"{p}:{lineno}: expected a JSON object")
            rows.append((lineno, obj))
        return _rows(p, rows)
    if _is_number(first):
        vals = []
        for lineno, ln in body:
            if not _is_number(ln):
                raise LengthFileError(f"{p}:{lineno}: expected one number per line, got {ln!r}")
            vals.append(_length(float(ln), p, lineno))
        return {"values": np.asarray(vals, dtype=np.int64)}
    reader = csv.DictReader(io.StringIO("\n".join(ln for _, ln in body)))
    if not reader.fieldnames or len(reader.fieldnames) < 1:
        raise LengthFileError(f"{p}: not a length file (numbers, CSV with a header, JSONL)")
    reader.fieldnames = [f.strip() for f in reader.fieldnames]
    rows = [(body[i + 1][0], r) for i, r in enumerate(reader)]
    return _rows(p, rows)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _length(v, p: Path, lineno: int) -> int:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise LengthFileError(f"{p}:{lineno}: {v!r} is not a number") from None
    if not x >= 1 or x != x:
        raise LengthFileError(f"{p}:{lineno}: length {v!r} must be >= 1")
    return int(round(x))


def _pick(row: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    return None


def _rows(p: Path, rows: list[tuple[int, dict]]) -> dict[str, np.ndarray]:
    ins, outs, convs = [], [], []
    for lineno, r in rows:
        i, o = _pick(r, INPUT_KEYS), _pick(r, OUTPUT_KEYS)
        ins.append(None if i is None else _length(i, p, lineno))
        outs.append(None if o is None else _length(o, p, lineno))
        c = _pick(r, CONVERSATION_KEYS)
        convs.append(None if c is None else str(c))
    has_in = any(x is not None for x in ins)
    has_out = any(x is not None for x in outs)
    if not has_in and not has_out:
        raise LengthFileError(f"{p}: no input/output length column (input: "
                              f"{', '.join(INPUT_KEYS)}; output: {', '.join(OUTPUT_KEYS)})")
    for name, col, has in (("input", ins, has_in), ("output", outs, has_out)):
        if has and any(x is None for x in col):
            lineno = rows[[x is None for x in col].index(True)][0]
            raise LengthFileError(f"{p}:{lineno}: the {name} length is missing")
    if any(c is not None for c in convs):
        if not (has_in and has_out):
            raise LengthFileError(f"{p}: multi-turn rows (conversation_id) need both input and "
                                  f"output lengths (the history holds both)")
        ins = grow_history(convs, ins, outs)
    out: dict[str, np.ndarray] = {}
    if has_in:
        out["input"] = np.asarray(ins, dtype=np.int64)
    if has_out:
        out["output"] = np.asarray(outs, dtype=np.int64)
    return out


def grow_history(conversations: list, new_inputs: list[int], outputs: list[int]) -> list[int]:
    """Each turn's prompt length: its conversation's earlier inputs and outputs (file order)
    plus its own new input. Rows without a conversation stand alone."""
    history: dict = {}
    grown = []
    for c, i, o in zip(conversations, new_inputs, outputs):
        h = history.get(c, 0) if c is not None else 0
        grown.append(h + i)
        if c is not None:
            history[c] = h + i + o
    return grown


def _sharegpt(p: Path) -> dict[str, np.ndarray]:
    from .dataset_files import DatasetError, read_sharegpt

    try:
        conversations = read_sharegpt(p)
    except DatasetError as e:
        raise LengthFileError(str(e)) from None
    convs, ins, outs = [], [], []
    for n, conv in enumerate(conversations):
        for j in range(len(conv) - 1):
            (r1, user), (r2, reply) = conv[j], conv[j + 1]
            if r1 == "user" and r2 == "assistant" and user.split() and reply.split():
                convs.append(n)
                ins.append(len(user.split()))
                outs.append(len(reply.split()))
    if not ins:
        raise LengthFileError(f"{p}: no conversation with a human turn followed by a gpt reply")
    return {"input": np.asarray(grow_history(convs, ins, outs), dtype=np.int64),
            "output": np.asarray(outs, dtype=np.int64)}
