"""The reference engine's options, defined once for every command that starts an engine.

`@engine_options` adds the flags below to a Typer command (`serve`, `run`) and hands the command
one `EngineOptions`; so the two cannot drift. Where they go:

    infer-bench serve --kv-cache-gb 1 ...   -> EngineOptions -> ServeSettings (same field names)
                                               -> backends/engine/http/serve.serve()
    infer-bench run --kv-cache-gb 1 ...     -> EngineOptions -> every EngineDeploymentSpec the
                                               run starts (same field names; spec.json records
                                               them) -> backends/launch.py turns them back into
                                               `python -m infer_bench.cli serve` flags

None means "the engine's default" (said in each flag's help). Disaggregation flags only matter
to disaggregated deployments (`serve --mode disagg`, `run --deployments ...,disagg`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

import typer

from .errors import UserError

PANEL = "Engine"
KV_TRANSPORTS = ("shm", "dist")


@dataclass(frozen=True)
class EngineOptions:
    device: str = "cpu"
    dtype: str = "auto"
    num_threads: int | None = None
    kv_cache_gb: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    block_size: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    speculation: str | None = None
    spec_k: int | None = None
    prefill_workers: int = 1
    decode_workers: int = 1
    kv_transport: str = "shm"
    layerwise: bool = True
    kv_link_gbps: float | None = None
    disagg_threshold: int | None = None

    def check(self) -> None:
        """Raise UserError (one line) on values no engine would take."""
        for flag, v in (("--kv-cache-gb", self.kv_cache_gb), ("--kv-link-gbps", self.kv_link_gbps)):
            if v is not None and not v > 0:
                raise UserError(f"{flag} must be > 0, got {v:g}")
        if self.kv_transport not in KV_TRANSPORTS:
            raise UserError(f"--kv-transport must be {' or '.join(KV_TRANSPORTS)}, "
                            f"got {self.kv_transport!r}")
        if self.speculation is not None:
            from infer_bench.backends.engine.spec_decode import parse_spec_flag

            try:
                parse_spec_flag(self.speculation)
            except ValueError as e:
                raise UserError(str(e)) from None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# EngineOptions field -> (flags, help, extra typer.Option arguments). The default is the field's.
_FLAGS: dict[str, tuple[tuple[str, ...], str, dict]] = {
    "device": (("--device",), "Engine device: cpu, cuda or cuda:N.", {}),
    "dtype": (("--dtype",), "Weights and KV cache: auto (float32 on the CPU, bfloat16 or float16 "
                            "on a GPU), float32, float16 or bfloat16.", {}),
    "num_threads": (("--threads",), "CPU threads of each engine deployment in total, split evenly "
                                    "across disagg workers (serve default: torch's, all cores; "
                                    "run default: 2).", {"min": 1}),
    "kv_cache_gb": (("--kv-cache-gb",), "KV-cache pool in GiB, per engine (disagg: per worker) "
                                        "(default: 80% of free memory, at most 2 GiB on the "
                                        "CPU).", {}),
    "max_num_batched_tokens": (("--max-num-batched-tokens",), "Token budget of one engine step: "
                                                              "decodes plus prefill chunks "
                                                              "(default 512).", {"min": 1}),
    "max_num_seqs": (("--max-num-seqs",), "Most sequences in the running batch (default 64).",
                     {"min": 1}),
    "max_model_len": (("--max-model-len",), "Context window, prompt plus output tokens (default: "
                                            "the model's).", {"min": 1}),
    "block_size": (("--block-size",), "Tokens per KV-cache block (default 16).", {"min": 1}),
    "enable_prefix_caching": (("--prefix-caching/--no-prefix-caching",),
                              "Reuse the KV cache of prompt prefixes seen before.", {}),
    "enable_chunked_prefill": (("--chunked-prefill/--no-chunked-prefill",),
                               "Split long prompts into chunks under the step's token budget.",
                               {}),
    "speculation": (("--spec",), "Speculative decoding: ngram (prompt lookup) or draft:MODEL (a "
                                 "draft model with the same tokenizer) (default: off).",
                    {"metavar": "ngram|draft:MODEL"}),
    "spec_k": (("--spec-k",), "Speculative tokens proposed per step (default 4).", {"min": 1}),
    "prefill_workers": (("--prefill-workers",), "Disagg: prefill worker processes.", {"min": 1}),
    "decode_workers": (("--decode-workers",), "Disagg: decode worker processes.", {"min": 1}),
    "kv_transport": (("--kv-transport",), "Disagg KV hand-off: shm (shared memory, one host) or "
                                          "dist (torch.distributed: gloo on CPU, NCCL on GPU).",
                     {}),
    "layerwise": (("--layerwise/--no-layerwise",), "Disagg: send each layer's KV as soon as it is "
                                                   "computed (else after the whole prefill).", {}),
    "kv_link_gbps": (("--kv-link-gbps",), "Disagg: pace KV transfers like a link of this many "
                                          "Gb/s (e.g. 25, 100, 400; default: unpaced).", {}),
    "disagg_threshold": (("--disagg-threshold",), "Disagg: prefill prompts with fewer uncached "
                                                  "tokens than this on the decode worker.",
                         {"min": 0}),
}


def _option_parameters() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(EngineOptions)
    params = []
    for f in dataclasses.fields(EngineOptions):
        flags, help_, extra = _FLAGS[f.name]
        option = typer.Option(f.default, *flags, help=help_, rich_help_panel=PANEL, **extra)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=hints[f.name]))
    return params


def engine_options(command: Callable) -> Callable:
    """Decorate a Typer command that takes `engine: EngineOptions`: the command gets the engine
    flags (after its own) and receives their values, checked, as one EngineOptions."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.name != "engine"]
    added = _option_parameters()
    clash = {p.name for p in own} & {p.name for p in added}
    if clash:
        raise TypeError(f"{command.__name__} already has engine options {sorted(clash)}")
    names = [p.name for p in added]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        engine = EngineOptions(**{n: kwargs.pop(n) for n in names})
        engine.check()
        return command(*args, engine=engine, **kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
