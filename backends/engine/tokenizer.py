"""Text <-> token ids for the reference engine, and streaming detokenization.

Data flow: `loader.load_model` builds a `Tokenizer` from the model's source (HF directory or GGUF).
The HTTP server renders chat messages with `apply_chat_template` and `encode`s the prompt; the
engine gives every request an `IncrementalDetokenizer` and streams `feed(token_id)` deltas back,
stopping on `eos_token_ids`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

_FALLBACK_TEMPLATE_NOTE = "no chat template: messages rendered as 'role: content' lines"


class Tokenizer:
    """A thin wrapper around a Hugging Face fast tokenizer."""

    def __init__(self, hf_tokenizer, extra_eos_ids: Iterable[int] = (), chat_template: str | None = None):
        self.hf = hf_tokenizer
        if chat_template:
            self.hf.chat_template = chat_template
        eos = set(int(i) for i in extra_eos_ids if i is not None)
        if self.hf.eos_token_id is not None:
            eos.add(int(self.hf.eos_token_id))
        self.eos_token_ids: set[int] = eos
        self.bos_token_id: int | None = self.hf.bos_token_id

    @classmethod
    def from_pretrained(cls, path: str | Path, *, gguf_file: str | None = None,
                        extra_eos_ids: Iterable[int] = (), chat_template: str | None = None) -> "Tokenizer":
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # GGUF conversion is chatty
        try:
            kw = {"gguf_file": gguf_file} if gguf_file else {}
            hf = AutoTokenizer.from_pretrained(str(path), **kw)
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(hf, extra_eos_ids, chat_template)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render OpenAI-style messages ([{"role", "content"}]) to the prompt text."""
        if not self.has_chat_template:  # see _FALLBACK_TEMPLATE_NOTE
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant:" if add_generation_prompt else "")
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def save_pretrained(self, path: str | Path) -> None:
        self.hf.save_pretrained(str(path))


class IncrementalDetokenizer:
    """Feed token ids one at a time, get the newly completed text.

    Like vLLM: decode a small window of already-emitted tokens and the window plus the new ones;
    the text past the window's own text is new. A tail ending in U+FFFD (a UTF-8 character split
    across tokens) is held back until a later token completes it (or `flush` at the end).
    """

    CONTEXT = 5  # prompt tokens kept as left context (spacing of SentencePiece-style tokenizers)

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Iterable[int] = (), skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = list(prompt_ids)[-self.CONTEXT:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def feed(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Emit whatever is still held back (call once when the sequence finishes)."""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta
