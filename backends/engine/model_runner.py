"""One forward pass over a scheduled mixed batch, and the sampled tokens.

Data flow: `engine.step()` passes the scheduler's ordered (sequence, num_new_tokens) list. The
runner flattens it into input_ids / positions (each sequence's tokens
token_ids[num_computed : num_computed + n]), builds the step's `PagedAttention` (slot mapping,
query/context lengths, block tables), runs `model(input_ids, positions, attn)` under
`torch.inference_mode()`, computes logits only for the rows that need a next token (the last row
of every sequence whose tokens are now all computed: a finished prompt, or a decode) and samples
them. It does not change the sequences; the engine applies the results.
"""

from __future__ import annotations

import torch

from .paged_attention import KVCache, PagedAttention, SeqSlice
from .sampling import Sampler
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: KVCache, device: torch.device | str = "cpu",
                 sampler: Sampler | None = None) -> None:
        self.model = model
        self.cache = cache
        self.device = torch.device(device)
        self.sampler = sampler or Sampler()

    def prepare(self, scheduled: list[tuple[Sequence, int]]):
        ids: list[int] = []
        positions: list[int] = []
        slices: list[SeqSlice] = []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        row = 0
        for seq, n in scheduled:
            start = seq.num_computed_tokens
            ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            slices.append(SeqSlice(n, start + n, seq.block_table))
            row += n
            if start + n == seq.num_tokens:
                sample_rows.append(row - 1)
                sample_seqs.append(seq)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        return input_ids, pos, PagedAttention(self.cache, slices), sample_rows, sample_seqs

    @torch.inference_mode()
    def run(self, scheduled: list[tuple[Sequence, int]]) -> dict[int, int]:
        """Returns {id(seq): sampled token} for the sequences that produced a token this step."""
        if not scheduled:
            return {}
        input_ids, positions, attn, rows, seqs = self.prepare(scheduled)
        hidden = self.model(input_ids, positions, attn)
        if not rows:
            return {}
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=hidden.device)])
        tokens = self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs])
        return {id(s): t for s, t in zip(seqs, tokens)}
