"""Every bad model source gives a ModelLoadError with a clear one-line message."""

from __future__ import annotations

import json
import shutil

import pytest

from infer_bench.backends.engine import model_store
from infer_bench.backends.engine.loader import ModelLoadError, load_model


def _error(source) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(source)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    msg = _error(tmp_path / "does-not-exist")
    assert "not found" in msg and "does-not-exist" in msg
    assert "not found" in _error("./no/such/model")


def test_unknown_registry_name():
    msg = _error("smollm9-1b")
    assert "smollm9-1b" in msg and "smollm2-135m" in msg  # names what is available
    with pytest.raises(ModelLoadError, match="unknown model"):
        model_store.ensure_model("smollm9-1b")


def test_bad_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file" * 10)
    msg = _error(bad)
    assert "bad.gguf" in msg and "GGUF" in msg


def test_other_file(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("hello")
    assert "not a .gguf" in _error(f)


def test_directory_without_config(tmp_path):
    assert "no config.json" in _error(tmp_path)


def test_unsupported_architecture(tmp_path, tiny_model_dir):
    d = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert "unsupported architecture" in _error(d)


def test_missing_weights(tmp_path, tiny_model_dir):
    d = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    assert "no weights" in _error(d)


def test_hub_id_offline(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    msg = _error("someorg/some-model")
    assert "someorg/some-model" in msg and "hub" in msg


def test_cached_registry_model_is_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_BENCH_CACHE", str(tmp_path))
    (row,) = [m for m in model_store.list_models() if m["name"] == "smollm2-135m"]
    assert row["cached"] is False and row["size_bytes"] == 0
    assert row["path"].startswith(str(tmp_path))
