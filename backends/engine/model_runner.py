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

from .model import single_thread_small_steps
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
            spec = seq.spec_tokens   # speculative proposals ride after the last token (n = 1 + k)
            ids.extend(seq.token_ids[start:start + n] if not spec else seq.token_ids[start:] + spec)
            positions.extend(range(start, start + n))
            slices.append(SeqSlice(n, start + n, seq.block_table))
            row += n
            if start + n == seq.num_tokens + len(spec):
                sample_rows.append(row - 1)
                sample_seqs.append(seq)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        return input_ids, pos, PagedAttention(self.cache, slices), sample_rows, sample_seqs

    @torch.inference_mode()
    @single_thread_small_steps  # one thread for tiny steps: see model.py
    def run(self, scheduled: list[tuple[Sequence, int]]) -> dict[int, int]:
        """Returns {id(seq): sampled token} for the sequences that produced a token this step;
        for a sequence with speculative proposals (seq.spec_tokens), a list: the accepted
        proposals and one token from the target (spec_decode.verify)."""
        if not scheduled:
            return {}
        input_ids, positions, attn, rows, seqs = self.prepare(scheduled)
        if any(s.spec_tokens for s in seqs):
            return self._run_speculative(self.model(input_ids, positions, attn), rows, seqs)
        # only the sampling rows get past the last layer's attention (see LlamaForCausalLM.forward)
        keep = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
        hidden = self.model(input_ids, positions, attn, keep_rows=keep)
        if not rows:
            return {}
        logits = self.model.compute_logits(hidden)
        tokens = self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs])
        return {id(s): t for s, t in zip(seqs, tokens)}

    def _run_speculative(self, hidden: torch.Tensor, rows: list[int], seqs: list[Sequence]) -> dict:
        """Like run()'s tail, but a sequence with k proposals gets {id: [accepted..., token]}
        from spec_decode.verify over the logits of its last k + 1 rows."""
        from .spec_decode import verify

        plain = [(r, s) for r, s in zip(rows, seqs) if not s.spec_tokens]
        spec = [(r, s) for r, s in zip(rows, seqs) if s.spec_tokens]
        idx = [r for r, _ in plain] + [i for r, s in spec for i in range(r - len(s.spec_tokens), r + 1)]
        logits = self.model.compute_logits(hidden[torch.tensor(idx, device=hidden.device)])
        out: dict = {}
        if plain:
            ps = [s for _, s in plain]
            tokens = self.sampler(logits[:len(ps)], [s.params for s in ps], [s.generator for s in ps])
            out.update((id(s), t) for s, t in zip(ps, tokens))
        out.update(verify(logits[len(plain):], [s for _, s in spec], self.sampler.generator))
        return out
