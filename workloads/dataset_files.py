"""Dataset files as data: ShareGPT conversations and timestamped traces read and checked, with
errors that name the file and line.

Role in the data flow: `workloads/datasets.py` builds requests from what these readers return,
and `workloads/length_data.py` reads a ShareGPT file's lengths for `file:` length distributions;
both import this module, which imports nothing from workloads/ (so `spec` -> `length_data` ->
here makes no cycle). Formats: see `workloads/datasets.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}
SKIP_ROLES = {"system", "tool", "function"}


class DatasetError(ValueError):
    """A dataset or trace file that cannot be used; the message names the file and line."""


def sample_dataset_path() -> Path:
    """The bundled ShareGPT-format sample (about 200 short conversations)."""
    return Path(__file__).parent / "data" / "sample_sharegpt.jsonl"


# ---------------------------------------------------------------------------- file readers

def _parse_conversation(obj: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object with 'conversations', "
                           f"got {type(obj).__name__}")
    conv = obj.get("conversations", obj.get("conversation"))
    if not isinstance(conv, list):
        raise DatasetError(f"{where}: missing 'conversations' list")
    turns: list[tuple[str, str]] = []
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) \
                or not isinstance(turn.get("value"), str):
            raise DatasetError(f"{where}: turn {j} needs string 'from' and 'value' fields")
        role = turn["from"].strip().lower()
        if role in SKIP_ROLES:
            continue
        if role in USER_ROLES:
            turns.append(("user", turn["value"]))
        elif role in ASSISTANT_ROLES:
            turns.append(("assistant", turn["value"]))
        else:
            raise DatasetError(f"{where}: turn {j} has unknown role 'from': {turn['from']!r} "
                               f"(expected human or gpt)")
    return turns


def read_sharegpt(path: str | Path) -> list[list[tuple[str, str]]]:
    """Conversations as lists of (role, text), role "user" | "assistant". JSONL or a JSON list."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"dataset file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    stripped = text.lstrip()
    convs: list[list[tuple[str, str]]] = []
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise DatasetError(f"{p}: not valid JSON ({e})") from None
        for i, obj in enumerate(items):
            convs.append(_parse_conversation(obj, f"{p} item {i}"))
        return convs
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DatasetError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        convs.append(_parse_conversation(obj, f"{p}:{lineno}"))
    return convs


def read_trace(path: str | Path) -> list[dict]:
    """Trace entries: dicts with float `timestamp`, and `input_len` (int) or `prompt` (str), and
    optionally `output_len` (int). Raises DatasetError naming the line on a bad entry."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"trace file {p} does not exist")
    out: list[dict] = []
    last = None
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(s)
        except ValueError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: expected a JSON object")
        ts = obj.get("timestamp")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts != ts:
            raise DatasetError(f"{where}: 'timestamp' (seconds, a number) is required")
        if last is not None and ts < last:
            raise DatasetError(f"{where}: timestamp {ts} is before the previous one ({last})")
        last = ts
        e: dict[str, Any] = {"timestamp": float(ts)}
        if isinstance(obj.get("prompt"), str):
            e["prompt"] = obj["prompt"]
        elif isinstance(obj.get("input_len"), int) and obj["input_len"] >= 1:
            e["input_len"] = int(obj["input_len"])
        else:
            raise DatasetError(f"{where}: needs 'input_len' (int >= 1) or 'prompt' (string)")
        if "output_len" in obj:
            if not isinstance(obj["output_len"], int) or obj["output_len"] < 1:
                raise DatasetError(f"{where}: 'output_len' must be an int >= 1")
            e["output_len"] = int(obj["output_len"])
        out.append(e)
    if not out:
        raise DatasetError(f"trace file {p} has no entries")
    return out
