"""The selection math (nucleus, cube mean keys) and the reference's chunking; the reference against a
brute-force per-token computation is in test_sparse_attention.py."""

import pytest
import torch

from adaspark_cli.attention import attention_reference
from adaspark_cli.attention import reference as reference_module
from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.cubes.plan import build_plan
from adaspark_cli.selection import cube_mean_keys, nucleus_mask, select_per_token
from adaspark_cli.selection import select as select_module


def test_chunking_gives_the_same_result(monkeypatch):
    torch.manual_seed(1)
    layout = cube_layout([VideoSpan(2, (4, 4, 4))], 70, (2, 2, 2))
    q, k, v = torch.randn(4, 70, 8), torch.randn(2, 70, 8), torch.randn(2, 70, 8)
    plan = build_plan(layout, 70, 70, block=8)
    whole_sel = select_per_token(q, k, plan, 0.5, 0.3)
    whole = attention_reference(q, k, v, plan, whole_sel, 0.3)
    monkeypatch.setattr(reference_module, "SCORE_BUDGET", 4 * 70 * 3)  # chunks of 3 queries
    monkeypatch.setattr(select_module, "TOKEN_SCORE_BUDGET", 4 * 8 * 3)
    chunked_sel = select_per_token(q, k, plan, 0.5, 0.3)
    assert torch.equal(chunked_sel.cubes, whole_sel.cubes)
    torch.testing.assert_close(attention_reference(q, k, v, plan, chunked_sel, 0.3), whole)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
def test_nucleus_sets_are_minimal_and_reach_p(top_p):
    torch.manual_seed(3)
    logits = torch.randn(50, 17) * 3
    candidates = torch.rand(50, 17) > 0.3
    probs = torch.softmax(logits.masked_fill(~candidates, float("-inf")), -1).nan_to_num(0)
    keep = nucleus_mask(probs, top_p, candidates)
    assert not (keep & ~candidates).any()
    for row in range(50):
        if not candidates[row].any():
            assert not keep[row].any()
            continue
        kept = probs[row][keep[row]]
        assert kept.sum() >= top_p - 1e-6  # reaches p
        assert kept.sum() - kept.min() < top_p + 1e-6  # dropping the smallest kept falls below p
        rest = probs[row][candidates[row] & ~keep[row]]
        assert rest.numel() == 0 or kept.min() >= rest.max()  # highest first


def test_nucleus_p_one_keeps_zero_probability_candidates():
    probs = torch.tensor([[1.0, 0.0, 0.0]])
    cands = torch.tensor([[True, True, False]])
    assert nucleus_mask(probs, 1.0, cands).tolist() == [[True, True, False]]


def test_cube_mean_keys_match_direct_means():
    torch.manual_seed(4)
    layout = cube_layout([VideoSpan(3, (3, 3, 3))], 33, (2, 2, 2))
    k = torch.randn(2, 33, 5)
    means = cube_mean_keys(k, layout)
    for c in range(layout.num_cubes):
        members = (layout.cube_of_token == c).nonzero().squeeze(1)
        torch.testing.assert_close(means[:, c], k[:, members].mean(1))


@pytest.mark.parametrize("hq,hkv", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha", "mqa"])
def test_batched_reference_is_each_sequence_alone(monkeypatch, hq, hkv):
    """The training fine-tune's batches: every sequence gets exactly its own selection and attention,
    on two videos with partial cubes, in chunks that cut across rows of the batch."""
    torch.manual_seed(7)
    layout = cube_layout([VideoSpan(3, (5, 3, 5)), VideoSpan(82, (3, 2, 3))], 104, (2, 2, 2))
    b, length, d = 3, 104, 8
    q, k, v = torch.randn(b, hq, length, d), torch.randn(b, hkv, length, d), torch.randn(b, hkv, length, d)
    plan = build_plan(layout, length, length, block=8)
    monkeypatch.setattr(reference_module, "SCORE_BUDGET", b * hq * length * 5)  # chunks of 5 queries
    monkeypatch.setattr(select_module, "TOKEN_SCORE_BUDGET", b * hq * layout.num_cubes * 7)
    batched = select_per_token(q, k, plan, 0.4, 0.35)
    assert batched.cubes.shape == (b, hkv, length, layout.num_cubes) and batched.kv_heads == hkv
    out = attention_reference(q, k, v, plan, batched, 0.35)
    assert out.shape == (b, length, hq, d)
    for i in range(b):
        alone = select_per_token(q[i], k[i], plan, 0.4, 0.35)
        assert torch.equal(batched.cubes[i], alone.cubes), f"sequence {i}"
        torch.testing.assert_close(out[i], attention_reference(q[i], k[i], v[i], plan, alone, 0.35))
    chosen = batched.cubes.sum(-1)
    assert 0 < int(chosen.sum()) < int(select_per_token(q, k, plan, 1.0, 0.35).cubes.sum())  # sparse, not empty
    assert not torch.equal(batched.cubes[0], batched.cubes[1])  # the rows are not one sequence repeated
