"""SamplingParams validation and the batched sampler (greedy, temperature, top-k, top-p, seeds)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from infer_bench.backends.engine.sampling import Sampler, SamplingParams, apply_top_k_top_p

torch.set_num_threads(1)

LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))


def draw(params: SamplingParams, n: int, logits=LOGITS, seed=0) -> Counter:
    sampler = Sampler(seed=seed)
    rows = logits.expand(n, -1)
    return Counter(sampler(rows, [params] * n, [None] * n))


@pytest.mark.parametrize("bad", [
    dict(max_tokens=0), dict(max_tokens=1.5), dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.1),
    dict(top_k=-2), dict(seed="x"), dict(stop=[""]), dict(stop_token_ids=[-1]), dict(ignore_eos="yes"),
])
def test_invalid_params_raise(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_param_normalisation():
    p = SamplingParams(stop="END", top_k=0)
    assert p.stop == ["END"] and p.top_k == -1


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, -1.0, 4.9]])
    p = SamplingParams(temperature=0)
    assert Sampler(seed=0)(logits, [p, p], [None, None]) == [1, 0]


def test_top_k_keeps_k_largest():
    out = apply_top_k_top_p(LOGITS.clone(), torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]
    assert set(draw(SamplingParams(top_k=2), 2000)) == {0, 1}
    assert set(draw(SamplingParams(top_k=1), 50)) == {0}


def test_top_p_nucleus():
    # mass before each sorted token: 0, .5, .75, .9 -> top_p=0.6 keeps {0, 1}; 0.8 keeps {0, 1, 2}
    for top_p, keep in [(0.6, [True, True, False, False]), (0.8, [True, True, True, False]),
                        (0.4, [True, False, False, False]), (1.0, [True] * 4)]:
        out = apply_top_k_top_p(LOGITS.clone(), torch.tensor([-1]), torch.tensor([top_p]))
        assert torch.isfinite(out[0]).tolist() == keep, top_p
    # unsorted input and a row-wise mix of settings
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25]]))
    out = apply_top_k_top_p(logits, torch.tensor([-1, 3]), torch.tensor([0.6, 1.0]))
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, True, True, False]]


def test_sampling_frequencies_follow_temperature():
    n = 4000
    counts = draw(SamplingParams(temperature=1.0), n)
    for tok, p in enumerate([0.5, 0.25, 0.15, 0.1]):
        assert abs(counts[tok] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (tok, counts)
    # low temperature concentrates on the mode, high flattens
    cold = draw(SamplingParams(temperature=0.2), n)
    hot = draw(SamplingParams(temperature=5.0), n)
    assert cold[0] / n > 0.95
    assert hot[3] / n > 0.18


def test_top_p_renormalises():
    n = 4000
    counts = draw(SamplingParams(top_p=0.6), n)
    assert set(counts) == {0, 1}
    assert abs(counts[0] / n - 2 / 3) < 0.04


def test_seeded_rows_independent_of_batch():
    p = SamplingParams(temperature=1.0, seed=42)
    other = SamplingParams(temperature=0.7, top_k=3)
    logits = torch.randn(5, 100, generator=torch.Generator().manual_seed(0))

    def seq_of_draws(batch_of):
        g = p.make_generator()
        sampler = Sampler(seed=123)
        toks = []
        for _ in range(20):
            rows = [logits[0]] + [logits[i] for i in range(1, batch_of)]
            params = [p] + [other] * (batch_of - 1)
            gens = [g] + [None] * (batch_of - 1)
            toks.append(sampler(torch.stack(rows), params, gens)[0])
        return toks

    alone = seq_of_draws(1)
    assert alone == seq_of_draws(5) == seq_of_draws(3)
    assert len(set(alone)) > 3


def test_mixed_greedy_and_sampled_batch():
    logits = torch.tensor([[0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    out = Sampler(seed=0)(logits, [SamplingParams(temperature=0), SamplingParams(top_k=1)], [None, None])
    assert out == [1, 2]
