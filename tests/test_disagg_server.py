"""`serve --mode disagg` end to end over HTTP: the extension object, /health, /debug/steps, a
decode worker killed with SIGKILL mid-stream, and a SIGTERM shutdown that leaves no worker
process and no shared-memory segment behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port


def _get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _stream(base, prompt_ids, max_tokens, on_chunk=None, timeout=60):
    body = json.dumps({"model": "tiny", "prompt": prompt_ids, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "ignore_eos": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            events.append(ev)
            if on_chunk:
                on_chunk(ev, len(events))
    return events


def _shm_segments(tag=""):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("ib-kv-"))


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("disagg-log") / "server.log"
    before = set(_shm_segments())
    cmd = [sys.executable, "-m", "infer_bench.cli", "serve", "--model", str(tiny_model_dir),
           "--served-model-name", "tiny", "--port", str(port), "--mode", "disagg",
           "--prefill-workers", "1", "--decode-workers", "2", "--threads", "3",
           "--kv-cache-gb", "0.01", "--block-size", "4"]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            code, _ = _get(base + "/health", 1)
            if code == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("disagg server did not become healthy:\n" + log.read_text())
    yield {"proc": proc, "base": base, "log": log, "shm_before": before}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    fh.close()


def test_stream_has_phase_timing(server):
    base = server["base"]
    code, h = _get(base + "/health")
    assert code == 200 and h["status"] == "ok" and h["roles"]["decode"]["alive"] == 2
    assert len(_shm_segments()) >= 2
    events = _stream(base, list(range(3, 40)), 6)
    ext = events[-1]["infer_bench"]
    for k in ("queue_s", "prefill_s", "transfer_s", "transfer_bytes", "admission_s", "decode_s",
              "cached_tokens", "preemptions", "token_steps", "steps", "disagg"):
        assert k in ext, k
    assert set(ext["disagg"]) >= {"prefill_worker", "decode_worker", "local_prefill"}
    assert ext["disagg"]["local_prefill"] is False and ext["transfer_bytes"] > 0
    time.sleep(0.4)
    code, steps = _get(base + "/debug/steps")
    assert code == 200
    assert {r["role"] for r in steps} == {"prefill", "decode"}
    assert all("worker" in r for r in steps)


def test_kill_decode_worker_mid_stream(server):
    base = server["base"]
    _, h = _get(base + "/health")
    d0 = next(w for w in h["workers"] if w["name"] == "decode-0")
    killed = []

    def on_chunk(ev, n):
        if n == 3 and not killed:
            os.kill(d0["pid"], signal.SIGKILL)
            killed.append(time.monotonic())

    t0 = time.monotonic()
    events = _stream(base, list(range(5, 30)), 1500, on_chunk)  # long: killed well before the end
    assert killed, "the stream ended before the kill"
    assert time.monotonic() - killed[0] < 5
    assert "error" in events[-1], events[-1]
    assert "decode-0" in events[-1]["error"]["message"]
    code, h = _get(base + "/health")
    assert code == 200 and h["status"] == "degraded" and h["roles"]["decode"]["alive"] == 1
    # the others keep serving
    events = _stream(base, list(range(7, 20)), 5)
    assert events[-1]["infer_bench"]["disagg"]["decode_worker"] == "decode-1"
    assert sum(len(e["choices"][0].get("token_ids") or []) for e in events if e.get("choices")) == 5
    assert time.monotonic() - t0 < 30


def test_sigterm_leaves_no_orphans_or_segments(server):
    proc = server["proc"]
    _, h = _get(server["base"] + "/health")
    pids = [w["pid"] for w in h["workers"]]
    proc.send_signal(signal.SIGTERM)  # the router alone: it must stop its workers
    assert proc.wait(30) == 0, server["log"].read_text()
    time.sleep(0.3)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", f"worker {pid} left running"
    # Only this deployment's segments (other deployments may run on the same machine).
    ours = {w["shm"] for w in h["workers"] if w.get("shm")}
    assert ours, h["workers"]
    leftover = set(_shm_segments()) & ours
    assert not leftover, leftover
