"""The run file: `infer-bench run --config run.toml`, a comparison that can be committed and re-run.

Role in the data flow: `--config` is read first (an eager option of `run`, cli/main.py); this
module checks the file (TOML syntax with its line, unknown keys, value types: one line naming the
file) and turns it into the values of `run`'s own options (`RunFile.options`, keyed by the
option's parameter name, put in Click's default map: a flag given on the command line wins over
the file, the file over the built-in default) plus its targets (`[[target]]` tables,
cli/targets.py; `--target` or `--url` on the command line replace them all). Relative paths are
taken from the current directory, as the flags' are.

    out = "results/mono-vs-pd"        # top level: out, repeats, interleave, warmup, timeout, ...
    [workload]                        # kind, input_len, output_len, num_requests, seed, ...
    [load]                            # rates or concurrency (lists), arrival, burstiness, bisect
    [slo]                             # ttft, tpot (seconds)
    [engine]                          # the bundled engine's options (model, threads, ...)
    [[target]]                        # name, url or engine, chips, metrics, api_key_env, model

See examples/run.toml.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .engine_options import EngineOptions
from .errors import UserError
from .targets import Target, check_targets, target_from_table

# ------------------------------------------------------------------ value checks
# Each takes (value, where) and returns the value as `run`'s option takes it, or raises UserError.


def _int(v, where):
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"{where} must be an integer, got {v!r}")
    return v


def _float(v, where):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{where} must be a number, got {v!r}")
    return float(v)


def _str(v, where):
    if not isinstance(v, str):
        raise UserError(f"{where} must be a string, got {v!r}")
    return v


def _bool(v, where):
    if not isinstance(v, bool):
        raise UserError(f"{where} must be true or false, got {v!r}")
    return v


def _length(v, where):
    """input_len / output_len: a token count or a distribution string (uniform:LO,HI, ...)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise UserError(f"{where} must be an integer or a string like \"uniform:64,256\", got {v!r}")
    return str(v)


def _numbers(kind: Callable, word: str):
    def check(v, where):
        if not isinstance(v, list) or not v or any(
                isinstance(x, bool) or not isinstance(x, kind) for x in v):
            raise UserError(f"{where} must be a list of {word}, e.g. [0.5, 1], got {v!r}")
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return check


def _strings(v, where):
    if not isinstance(v, list) or any(not isinstance(x, str) for x in v):
        raise UserError(f"{where} must be a list of strings, got {v!r}")
    return v


# section -> key in the file -> (run's parameter name, check). "" is the top level.
SCHEMA: dict[str, dict[str, tuple[str, Callable]]] = {
    "": {
        "out": ("out", _str),
        "repeats": ("repeats", _int),
        "interleave": ("interleave", _bool),
        "warmup": ("warmup", _int),
        "timeout": ("timeout", _float),
        "steady_state": ("steady_state", _float),
        "tokenizer": ("tokenizer", _str),
        "workers": ("workers", _int),
        "ray": ("ray", _str),
        "price_per_chip_hour": ("price_per_chip_hour", _str),
        "pin_cores": ("pin_cores", _bool),
        "checks": ("check", _strings),
    },
    "workload": {
        "kind": ("workload", _str),
        "input_len": ("input_len", _length),
        "output_len": ("output_len", _length),
        "num_requests": ("num_requests", _int),
        "seed": ("seed", _int),
        "endpoint": ("endpoint", _str),
        "dataset": ("dataset", _str),
        "shared_prefix_len": ("shared_prefix_len", _int),
    },
    "load": {
        "rates": ("rates", _numbers((int, float), "positive numbers")),
        "concurrency": ("concurrency", _numbers(int, "positive integers")),
        "arrival": ("arrival", _str),
        "burstiness": ("burstiness", _float),
        "bisect": ("bisect", _str),
    },
    "slo": {
        "ttft": ("slo_ttft", _float),
        "tpot": ("slo_tpot", _float),
    },
    "engine": {
        "model": ("model", _str),
        "deployments": ("deployments", lambda v, w: ",".join(_strings(v, w))),
    },
}
# [engine] also takes every engine option under its flag's name (threads, kv_cache_gb,
# prefix_caching, spec, ...): --kv-cache-gb -> kv_cache_gb -> EngineOptions.kv_cache_gb
_ENGINE_RENAMES = {"num_threads": "threads", "enable_prefix_caching": "prefix_caching",
                   "enable_chunked_prefill": "chunked_prefill", "speculation": "spec"}
_BY_TYPE = {bool: _bool, int: _int, float: _float, str: _str}
for _name, _hint in typing.get_type_hints(EngineOptions).items():
    _base = next(t for t in _BY_TYPE if _hint is t or t in typing.get_args(_hint))
    SCHEMA["engine"][_ENGINE_RENAMES.get(_name, _name)] = (_name, _BY_TYPE[_base])


@dataclass
class RunFile:
    path: Path
    options: dict[str, Any] = field(default_factory=dict)   # run's parameter name -> value
    targets: list[Target] = field(default_factory=list)


def load_run_file(path: Path | str) -> RunFile:
    """Read and check a run file; UserError (one line naming the file) on anything wrong."""
    path = Path(path)
    name = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config {name} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"--config {name} is a directory, not a run file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{name}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text") from None
    rf = RunFile(path=path)
    sections = set(SCHEMA) - {""} | {"target"}
    for key, value in data.items():
        if key == "target":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise UserError(f"{name}: target must be [[target]] tables")
            rf.targets = check_targets((target_from_table(t, f"{name}: [[target]]") for t in value),
                                       where=f"{name}: ")
        elif key in SCHEMA and key:
            if not isinstance(value, dict):
                raise UserError(f"{name}: {key} must be a [{key}] table")
            _read_section(rf, key, value, name)
        elif key in SCHEMA[""]:
            _read_key(rf, "", key, value, name)
        else:
            raise UserError(f"{name}: unknown key {key!r} (known: "
                            f"{', '.join(sorted(SCHEMA['']))}, tables {', '.join(sorted(sections))})")
    return rf


def _read_section(rf: RunFile, section: str, table: dict, name: str) -> None:
    for key, value in table.items():
        if key not in SCHEMA[section]:
            raise UserError(f"{name}: unknown key {key!r} in [{section}] "
                            f"(known: {', '.join(SCHEMA[section])})")
        _read_key(rf, section, key, value, name)


def _read_key(rf: RunFile, section: str, key: str, value: Any, name: str) -> None:
    param, check = SCHEMA[section][key]
    where = f"{name}: " + (f"[{section}] {key}" if section else key)
    rf.options[param] = check(value, where)
