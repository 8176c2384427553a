"""The wheel builds, carries every package and the console script, and runs from outside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(out.glob("infer_bench-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contents(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    for mod in ("infer_bench/cli/main.py", "infer_bench/workloads/__init__.py",
                "infer_bench/backends/launch.py", "infer_bench/backends/engine/__init__.py",
                "infer_bench/reports/__init__.py", "infer_bench/reports/figures/__init__.py",
                "infer_bench/workloads/planning/predict.py", "infer_bench/backends/engine/csrc/paged_decode.c",
                "infer_bench/backends/engine/csrc/paged_prefill.c", "infer_bench/backends/engine/csrc/parallel.h"):
        assert mod in names, mod
    assert not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "infer-bench = infer_bench.cli.main:main" in text


def test_wheel_runs_help_from_outside_repo(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # -S: no site processing, so the editable install of the checkout is invisible; the wheel's
    # copy comes first and third-party packages come from this environment's site-packages.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    code = ("import sys, infer_bench.cli.main as m; print(m.__file__); "
            "sys.exit(m.main(['--help']))")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(target))
    assert "infer-bench" in proc.stdout and "run" in proc.stdout
