"""Named targets of a run: `--target NAME=URL[,key=value...]` and `[[target]]` tables of a run file.

Role in the data flow: cli/main.py (flags) and cli/run_file.py (the TOML file) turn each target
into a `Target`; cli/run_cmd.py turns the list into deployment specs (backends/launch.py:
`ExternalDeploymentSpec` for a server given by URL, `EngineDeploymentSpec` for the bundled
engine, `NAME=engine:mono` / `NAME=engine:disagg`, with the run's engine options). Everything
here is parsing and checking: a bad target raises `UserError` with one line naming it; nothing
is sent anywhere (reachability is checked by `backends.launch.probe_external`).

    --target mono=http://h1:8000,chips=2,metrics=http://h1:9400/metrics,api_key_env=H1_KEY,model=llama
    --target local=engine:disagg
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import UserError

ENGINE_MODES = ("mono", "disagg")
# the keys a target of either form takes besides its name and where it is; engine targets take
# none (their chips, model and metrics come from the run's engine options)
TARGET_KEYS = ("chips", "metrics", "api_key_env", "model")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Target:
    """One deployment to measure: an external server (`url`) or the bundled engine (`engine`:
    mono or disagg). `chips` None: 1 for a URL (an engine's come from its threads)."""

    name: str
    url: str | None = None
    engine: str | None = None
    chips: int | None = None
    metrics: str | None = None
    api_key_env: str | None = None
    model: str | None = None

    def api_key(self) -> str | None:
        """The API key, read from the environment now (never stored in the spec)."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UserError(f"target {self.name!r}: environment variable {self.api_key_env} "
                            "(its api_key_env) is not set")
        return key


def parse_target(text: str) -> Target:
    """`NAME=URL[,chips=N][,metrics=URL][,api_key_env=VAR][,model=NAME]` or `NAME=engine:MODE`."""
    where = f"--target {text!r}"
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise UserError(f"{where}: expected NAME=URL[,chips=N][,metrics=URL][,api_key_env=VAR]"
                        "[,model=NAME] or NAME=engine:mono|disagg")
    url, *items = rest.split(",")
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"{where}: expected key=value after the URL, got {item!r}")
        if key not in TARGET_KEYS:
            raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(TARGET_KEYS)})")
        if key in fields:
            raise UserError(f"{where}: {key} given twice")
        fields[key] = value.strip()
    return make_target(name.strip(), url.strip(), fields, where)


def target_from_table(table: Mapping[str, Any], where: str) -> Target:
    """A `[[target]]` table of a run file: name and one of url / engine, plus TARGET_KEYS."""
    known = ("name", "url", "engine") + TARGET_KEYS
    for key in table:
        if key not in known:
            raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
    name = table.get("name")
    if not isinstance(name, str):
        raise UserError(f"{where}: needs name = \"...\" (a string)")
    where = f"{where} {name!r}"
    url, engine = table.get("url"), table.get("engine")
    if (url is None) == (engine is None):
        raise UserError(f"{where}: give one of url = \"http://...\" or engine = \"mono\"|\"disagg\"")
    for key in ("url", "engine", "metrics", "api_key_env", "model"):
        if table.get(key) is not None and not isinstance(table[key], str):
            raise UserError(f"{where}: {key} must be a string, got {table[key]!r}")
    chips = table.get("chips")
    if chips is not None and (isinstance(chips, bool) or not isinstance(chips, int)):
        raise UserError(f"{where}: chips must be an integer >= 1, got {chips!r}")
    fields = {k: table[k] for k in TARGET_KEYS if table.get(k) is not None}
    return make_target(name, url if url is not None else f"engine:{engine}", fields, where)


def make_target(name: str, where_to: str, fields: Mapping[str, Any], where: str) -> Target:
    """Check one target's parts (`where_to`: a URL or engine:MODE) and build it."""
    if not NAME_RE.match(name):
        raise UserError(f"{where}: the name {name!r} must be letters, digits, '_', '.' or '-' "
                        "(starting with a letter or digit)")
    if where_to.startswith("engine:"):
        mode = where_to[len("engine:"):]
        if mode not in ENGINE_MODES:
            raise UserError(f"{where}: engine:{mode} is not a bundled deployment "
                            f"(engine:{' or engine:'.join(ENGINE_MODES)})")
        if fields:
            raise UserError(f"{where}: an engine target takes no {', '.join(fields)} (its chips "
                            "come from --threads, its model from --model)")
        return Target(name=name, engine=mode)
    if not re.match(r"^https?://[^/\s]+", where_to):
        raise UserError(f"{where}: {where_to!r} is not an http(s):// URL or engine:mono|disagg")
    chips = fields.get("chips")
    if chips is not None:
        try:
            chips = int(str(chips))
        except ValueError:
            chips = None
        if chips is None or chips < 1:
            raise UserError(f"{where}: chips must be an integer >= 1, got {fields['chips']!r}")
    metrics = fields.get("metrics") or None
    if metrics is not None and not re.match(r"^https?://[^/\s]+", metrics):
        raise UserError(f"{where}: metrics={metrics!r} is not an http(s):// URL")
    env = fields.get("api_key_env") or None
    if env is not None and not ENV_RE.match(env):
        raise UserError(f"{where}: api_key_env={env!r} is not an environment variable name")
    return Target(name=name, url=where_to, chips=chips, metrics=metrics, api_key_env=env,
                  model=fields.get("model") or None)


def check_targets(targets: Iterable[Target], where: str = "") -> list[Target]:
    """The targets as a list; UserError on a duplicate name (`where`: a prefix naming the file)."""
    out, seen = [], set()
    for t in targets:
        if t.name in seen:
            raise UserError(f"{where}target name {t.name!r} is given twice: every target needs "
                            "its own name")
        seen.add(t.name)
        out.append(t)
    return out
