"""AdaS-Attn reference against a brute-force per-token computation on random inputs."""

import math

import pytest
import torch

from adaspark_cli.attention import AttentionStats, adas_attention_reference, cube_mean_keys, nucleus_mask
from adaspark_cli.attention import reference as reference_module
from adaspark_cli.cubes import VideoSpan, cube_layout


def brute_force(query, key, value, layout, top_p, scaling):
    """One query token at a time, plain Python sets and a softmax over the allowed keys."""
    hq, lq, d = query.shape
    hkv, lk, _ = key.shape
    group = hq // hkv
    past = lk - lq
    cube_of = layout.cube_of_token.tolist()
    slab_of = layout.slab_of_token.tolist()
    slab_of_cube = layout.slab_of_cube.tolist()
    means = []
    for c in range(layout.num_cubes):
        members = [i for i in range(lk) if cube_of[i] == c]
        means.append(key[:, members].double().mean(dim=1))  # (Hkv, D)
    out = torch.zeros(lq, hq, d, dtype=torch.float64)
    for qi in range(lq):
        p = past + qi
        for g in range(hkv):
            allowed = set(range(p + 1))
            if slab_of[p] >= 0:
                cands = [c for c in range(layout.num_cubes) if slab_of_cube[c] < slab_of[p]]
                chosen = set()
                if cands:
                    probs = torch.zeros(len(cands), dtype=torch.float64)
                    for h in range(g * group, (g + 1) * group):
                        logits = torch.stack([query[h, qi].double() @ means[c][g] * scaling for c in cands])
                        probs += torch.softmax(logits, 0) / group
                    ranked = sorted(range(len(cands)), key=lambda i: -probs[i].item())
                    mass = 0.0
                    for i in ranked:
                        if top_p < 1.0 and mass >= top_p:
                            break
                        chosen.add(cands[i])
                        mass += probs[i].item()
                allowed = {
                    k for k in allowed if cube_of[k] < 0 or slab_of[k] == slab_of[p] or cube_of[k] in chosen
                }
            keys = sorted(allowed)
            for h in range(g * group, (g + 1) * group):
                s = torch.stack([query[h, qi].double() @ key[g, k].double() * scaling for k in keys])
                w = torch.softmax(s, 0)
                out[qi, h] = (w[:, None] * value[g, keys].double()).sum(0)
    return out


CASES = [
    pytest.param(3, [(2, (3, 2, 3))], (2, 2, 2), 4, 2, 5, 0, id="one-video-partial-cubes"),
    pytest.param(2, [(1, (4, 2, 2)), (22, (2, 1, 3))], (1, 2, 2), 6, 2, 7, 0, id="two-videos"),
    pytest.param(1, [(1, (3, 3, 2))], (2, 8, 8), 3, 1, 12, 0, id="cube-wider-than-frame-mha"),
    pytest.param(4, [(4, (4, 2, 2))], (1, 1, 2), 4, 2, 6, 5, id="with-past-cache"),
]


@pytest.mark.parametrize("n_text,spans,cube,hq,hkv,d,past_cut", CASES)
@pytest.mark.parametrize("top_p", [0.3, 0.7, 1.0])
def test_reference_matches_brute_force(n_text, spans, cube, hq, hkv, d, past_cut, top_p):
    torch.manual_seed(hash((n_text, cube, hq, d, top_p)) % 1000)
    spans = [VideoSpan(s, g) for s, g in spans]
    seq_len = max(s.end for s in spans) + 3
    layout = cube_layout(spans, seq_len, cube)
    key = torch.randn(hkv, seq_len, d) * 2
    value = torch.randn(hkv, seq_len, d)
    query = torch.randn(hq, seq_len - past_cut, d) * 2
    scaling = 1 / math.sqrt(d)
    got = adas_attention_reference(query, key, value, layout, top_p=top_p, scaling=scaling)
    want = brute_force(query, key, value, layout, top_p, scaling)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_p_one_equals_dense_causal_attention():
    torch.manual_seed(0)
    layout = cube_layout([VideoSpan(5, (6, 4, 4))], 5 + 96 + 4, (2, 2, 2))
    hq, hkv, d, L = 4, 2, 8, layout.seq_len
    q, k, v = torch.randn(hq, L, d), torch.randn(hkv, L, d), torch.randn(hkv, L, d)
    got = adas_attention_reference(q, k, v, layout, top_p=1.0, scaling=d**-0.5)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q[None], k.repeat_interleave(2, 0)[None], v.repeat_interleave(2, 0)[None], is_causal=True
    )[0].transpose(0, 1)
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-5)


def test_chunking_gives_the_same_result(monkeypatch):
    torch.manual_seed(1)
    layout = cube_layout([VideoSpan(2, (4, 4, 4))], 70, (2, 2, 2))
    q, k, v = torch.randn(4, 70, 8), torch.randn(2, 70, 8), torch.randn(2, 70, 8)
    whole = adas_attention_reference(q, k, v, layout, top_p=0.5, scaling=0.3)
    monkeypatch.setattr(reference_module, "SCORE_BUDGET", 4 * 70 * 3)  # chunks of 3 queries
    chunked = adas_attention_reference(q, k, v, layout, top_p=0.5, scaling=0.3)
    torch.testing.assert_close(whole, chunked)


def test_stats_count_cubes_and_density():
    torch.manual_seed(2)
    layout = cube_layout([VideoSpan(1, (4, 2, 2))], 18, (1, 2, 2))  # 4 cubes, one per slab
    q, k, v = torch.randn(2, 18, 4), torch.randn(1, 18, 4), torch.randn(1, 18, 4)
    dense, sparse = AttentionStats(), AttentionStats()
    adas_attention_reference(q, k, v, layout, top_p=1.0, scaling=0.5, stats=dense)
    adas_attention_reference(q, k, v, layout, top_p=0.01, scaling=0.5, stats=sparse)
    assert dense.video_queries == sparse.video_queries == 16
    assert dense.cubes_total == 4 * (1 + 2 + 3 + 4)  # cubes up to each query's slab
    assert dense.cubes_attended == dense.cubes_total
    assert dense.attended_keys == dense.causal_keys == sum(range(2, 18))
    # p -> 0 keeps exactly one candidate cube (or none in the first slab) plus the own slab
    assert sparse.cubes_attended == 4 * 1 + 4 * 2 + 4 * 2 + 4 * 2
    assert sparse.cubes_attended_max == 2 and sparse.cubes_attended_min == 1
    assert sparse.attended_keys < dense.attended_keys


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
