"""A real third-party OpenAI-compatible server as an `infer-bench run --url` target:
llama-cpp-python's server (`python -m llama_cpp.server`) on the default GGUF.

What it does: starts `<llama python> -m llama_cpp.server --model GGUF --host 127.0.0.1 --port
<free port> --interrupt_requests False`, waits for GET /v1/models, runs a short `infer-bench run --url ...` against it per
endpoint (completions, then chat; streaming, as every run is; a few requests at a low Poisson
rate), prints each run's summary table (the run command's own) and the server's Prometheus
/metrics if it exports any, and stops the server. Nothing here is in CI (the server needs a
~7-25 minute build); tests/test_third_party_server.py runs against the same server when
LLAMA_PYTHON names a python that has it, and always against a small look-alike.

Install llama-cpp-python's server into a virtual environment of its own (never the project's;
it compiles llama.cpp, ~7 minutes on 2 idle cores):

    python3 -m venv /work/llamacpp/venv
    /work/llamacpp/venv/bin/pip install 'llama-cpp-python[server]==0.3.36'
    # or, from a wheel built once: pip wheel --no-deps 'llama-cpp-python==0.3.36' -w WHEELS
    #   /work/llamacpp/venv/bin/pip install "WHEELS/llama_cpp_python-0.3.36-<tags>.whl[server]"

Exact command (what the note of issue 16 reports):

    LLAMA_PYTHON=/work/llamacpp/venv/bin/python .venv/bin/python bench/llamacpp_target.py

Options: --llama-python (default $LLAMA_PYTHON), --model (default the bundled engine's GGUF,
~/.cache/infer-bench/gguf/SmolLM2-135M-Instruct.Q4_1.gguf), --num-requests 6, --rate 0.5,
--input-len 32, --output-len 16, --endpoints completions,chat, --out (results dirs; default a
temporary dir), --keep-server-log.

Known server behaviour (llama-cpp-python 0.3.36, found with this script): it validates
X-Request-Id as a UUID (starlette-context's RequestIdPlugin) and answers 400 with an empty body
otherwise, which is why the client sends UUIDs; it ignores `stream_options.include_usage` (no usage
chunk: output tokens are counted from the chunks, one token per chunk) and `ignore_eos` (a
response may end before --output-len at the end-of-sequence token); it serves one request at a
time, and by default a request that arrives while another streams cuts the running one short
(`data: [DONE]` with no finish_reason; the client records those as stream errors), hence
`--interrupt_requests False`; and it has no /metrics route (404 {"detail":"Not Found"}), so runs
against it have no server-side figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_GGUF = Path.home() / ".cache" / "infer-bench" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body text) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except OSError:
        return 0, ""


class LlamaServer:
    """`python -m llama_cpp.server` in a process group of its own, its output in a log file."""

    def __init__(self, python: str, model: Path, log_path: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.python, self.model, self.log_path = python, model, log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> "LlamaServer":
        cmd = [self.python, "-m", "llama_cpp.server", "--model", str(self.model),
               "--host", "127.0.0.1", "--port", str(self.port),
               "--interrupt_requests", "False", *self.extra_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; "
                                   f"log: {self.log_path}")
            if get(self.url + "/v1/models", timeout=2)[0] == 200:
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server not ready in {timeout_s:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def has_llama_server(python: str | None) -> str | None:
    """None when `python` can import llama_cpp.server, else why not (one line)."""
    if not python:
        return "no python named (--llama-python or LLAMA_PYTHON)"
    if shutil.which(python) is None and not Path(python).exists():
        return f"{python}: not found"
    r = subprocess.run([python, "-c", "import llama_cpp, llama_cpp.server; print(llama_cpp.__version__)"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import llama_cpp.server ({tail})"
    return None


def infer_bench_cmd() -> list[str]:
    """The `infer-bench` console script next to this python, else `python -m infer_bench.cli`."""
    exe = Path(sys.executable).with_name("infer-bench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "infer_bench.cli"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON"),
                    help="a python with llama-cpp-python[server] (default: $LLAMA_PYTHON)")
    ap.add_argument("--model", type=Path, default=DEFAULT_GGUF, help="GGUF file to serve")
    ap.add_argument("--num-requests", type=int, default=6)
    ap.add_argument("--rate", type=float, default=0.5, help="Poisson rate, req/s")
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--endpoints", default="completions,chat")
    ap.add_argument("--out", type=Path, default=None, help="results dirs go here")
    args = ap.parse_args(argv)

    why = has_llama_server(args.llama_python)
    if why:
        print(f"error: {why}; install llama-cpp-python[server] into a venv of its own (see "
              f"this script's docstring)", file=sys.stderr)
        return 2
    if not args.model.exists():
        print(f"error: {args.model}: no such GGUF file", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="llamacpp-target-"))
    out.mkdir(parents=True, exist_ok=True)
    rc = 0
    with LlamaServer(args.llama_python, args.model, out / "llama_server.log") as srv:
        print(f"llama_cpp.server on {srv.url} (model {args.model.name})", flush=True)
        for endpoint in args.endpoints.split(","):
            cmd = infer_bench_cmd() + [
                "run", "--url", srv.url, "--endpoint", endpoint, "--rates", f"{args.rate:g}",
                "--num-requests", str(args.num_requests), "--input-len", str(args.input_len),
                "--output-len", str(args.output_len), "--warmup", "1", "--steady-state", "0",
                "--timeout", "120",
                "--out", str(out / f"run-{endpoint}")]
            print("$ " + " ".join(cmd), flush=True)
            r = subprocess.run(cmd)
            print(f"(exit {r.returncode})", flush=True)
            rc = rc or r.returncode
        status, text = get(srv.url + "/metrics")
        if status == 200 and text.strip():
            print(f"--- {srv.url}/metrics ---")
            print(text.rstrip())
        else:
            print(f"{srv.url}/metrics: HTTP {status or 'no answer'}: this server exports no "
                  f"Prometheus metrics (llama-cpp-python has no /metrics route), so runs "
                  f"against it have no server-side figures")
    print(f"results: {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
