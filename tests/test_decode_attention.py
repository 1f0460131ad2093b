"""Decode-step AdaS-Attn: the reference against a brute-force loop, the gathered fast path against the reference."""

import pytest
import torch

from adaspark_cli.attention.decode import (
    DecodeStats,
    decode_attention_gathered,
    decode_attention_reference,
    gather_index,
    video_cube_keys,
)
from adaspark_cli.selection import scoring as selection
from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.errors import AdasparkError


def cube_mean_keys(key, layout):
    """Mean keys of the video prefix (the keys after it are text)."""
    return selection.cube_mean_keys(key[:, : layout.seq_len], layout)


def brute_force_decode(query, key, value, layout, top_p, scaling):
    """One query at a time, plain Python sets: every cube is a candidate, text keys always attended."""
    hq, lq, d = query.shape
    hkv, lk, _ = key.shape
    group = hq // hkv
    cube_of = layout.cube_of_token.tolist() + [-1] * (lk - layout.seq_len)
    members = [[i for i in range(lk) if cube_of[i] == c] for c in range(layout.num_cubes)]
    out = torch.zeros(lq, hq, d, dtype=torch.float64)
    for qi in range(lq):
        p = lk - lq + qi
        for g in range(hkv):
            means = torch.stack([key[g, m].double().mean(0) for m in members])  # (C, D)
            probs = sum(torch.softmax(query[h, qi].double() @ means.T * scaling, 0) for h in range(g * group, (g + 1) * group)) / group
            chosen, mass = set(), 0.0
            for c in sorted(range(layout.num_cubes), key=lambda c: -probs[c].item()):
                if top_p < 1.0 and mass >= top_p:
                    break
                chosen.add(c)
                mass += probs[c].item()
            keys = [k for k in range(p + 1) if cube_of[k] < 0 or cube_of[k] in chosen]
            for h in range(g * group, (g + 1) * group):
                w = torch.softmax(key[g, keys].double() @ query[h, qi].double() * scaling, 0)
                out[qi, h] = w @ value[g, keys].double()
    return out


def random_case(spans, cube, trailing, hq, hkv, d=8, seed=0, lq=1):
    """Random q/k/v for a prompt of `spans` plus `trailing` text tokens after the video prefix (the
    question and earlier answer tokens); the query is the last lq tokens."""
    g = torch.Generator().manual_seed(seed)
    prefix = max(s.end for s in spans) + 2
    layout = cube_layout(spans, prefix, cube)
    lk = prefix + trailing
    query = torch.randn(hq, lq, d, generator=g) * 2
    key = torch.randn(hkv, lk, d, generator=g) * 2
    value = torch.randn(hkv, lk, d, generator=g)
    return layout, query, key, value


CASES = [
    pytest.param([VideoSpan(3, (4, 3, 5))], (2, 2, 2), 8, 2, id="gqa-partial-cubes"),
    pytest.param([VideoSpan(2, (2, 4, 4)), VideoSpan(40, (3, 2, 3))], (1, 2, 2), 4, 4, id="two-videos-mha"),
    pytest.param([VideoSpan(1, (6, 2, 2))], (2, 2, 2), 6, 1, id="mqa"),
]


@pytest.mark.parametrize("spans, cube, hq, hkv", CASES)
@pytest.mark.parametrize("top_p", [0.3, 0.7, 1.0])
def test_reference_matches_brute_force(spans, cube, hq, hkv, top_p):
    layout, q, k, v = random_case(spans, cube, trailing=5, hq=hq, hkv=hkv, lq=3)
    got = decode_attention_reference(q, k, v, layout, cube_mean_keys(k, layout), top_p=top_p, scaling=0.35)
    torch.testing.assert_close(got.double(), brute_force_decode(q, k, v, layout, top_p, 0.35), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spans, cube, hq, hkv", CASES)
@pytest.mark.parametrize("top_p", [0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gathered_equals_reference(spans, cube, hq, hkv, top_p, seed):
    layout, q, k, v = random_case(spans, cube, trailing=3, hq=hq, hkv=hkv, seed=seed)
    mk = cube_mean_keys(k, layout)
    ref_stats, fast_stats = DecodeStats(), DecodeStats()
    ref = decode_attention_reference(q, k, v, layout, mk, top_p=top_p, scaling=0.4, stats=ref_stats)
    fast = decode_attention_gathered(q, k, v, layout, mk, top_p=top_p, scaling=0.4, stats=fast_stats)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert fast_stats == ref_stats


def test_gathered_in_bfloat16_is_close_to_the_float32_reference():
    layout, q, k, v = random_case([VideoSpan(3, (4, 4, 4))], (2, 2, 2), trailing=4, hq=8, hkv=2, d=16, seed=5)
    mk = cube_mean_keys(k, layout)
    ref = decode_attention_reference(q, k, v, layout, mk, top_p=0.6, scaling=0.25)
    fast = decode_attention_gathered(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, cube_mean_keys(k.bfloat16(), layout), top_p=0.6, scaling=0.25)
    assert fast.dtype == torch.bfloat16
    assert float((fast.float() - ref).abs().max()) < 0.05


@pytest.mark.parametrize("fn", [decode_attention_reference, decode_attention_gathered])
def test_p_one_is_dense_attention(fn):
    layout, q, k, v = random_case([VideoSpan(2, (4, 3, 3))], (2, 2, 2), trailing=6, hq=6, hkv=2)
    got = fn(q, k, v, layout, cube_mean_keys(k, layout), top_p=1.0, scaling=0.3)
    dense = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], scale=0.3, enable_gqa=True)[0]
    torch.testing.assert_close(got, dense.transpose(0, 1), rtol=1e-5, atol=1e-5)


def test_low_top_p_attends_fewer_cubes_and_changes_the_output():
    layout, q, k, v = random_case([VideoSpan(2, (4, 4, 4))], (2, 2, 2), trailing=3, hq=4, hkv=2, seed=3)
    mk = cube_mean_keys(k, layout)
    stats = DecodeStats()
    sparse = decode_attention_gathered(q, k, v, layout, mk, top_p=0.3, scaling=0.5, stats=stats)
    dense = decode_attention_gathered(q, k, v, layout, mk, top_p=1.0, scaling=0.5)
    assert not torch.allclose(sparse, dense, atol=1e-3)
    assert 0 < stats.cubes_attended < stats.cubes_total == 2 * layout.num_cubes
    assert stats.attended_keys < stats.causal_keys
    row = stats.to_json(top_p=0.3, steps=1, num_cubes=layout.num_cubes)
    assert 0 < row["cubes_attended_mean"] < row["cubes_total"] and 0 < row["attn_density"] < 1


def test_gather_index_keeps_order_and_masks_padding():
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    index, valid = gather_index(keep, keep.sum(-1), [3, 1])
    assert index[0].tolist() == [0, 2, 3] and index[1, 0].item() == 1
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    _, none = gather_index(torch.ones(2, 4, dtype=torch.bool), torch.tensor([4, 4]), [4, 4])
    assert none is None


def test_queries_inside_the_video_are_rejected():
    layout, q, k, v = random_case([VideoSpan(2, (2, 2, 2))], (1, 2, 2), trailing=0, hq=2, hkv=1, lq=2)
    with pytest.raises(AdasparkError, match="after the video"):
        decode_attention_reference(q, k, v, layout, cube_mean_keys(k, layout), top_p=0.5, scaling=1.0)


def test_video_cube_keys_from_cached_keys():
    layout, _, k, _ = random_case([VideoSpan(2, (2, 4, 4))], (1, 2, 2), trailing=4, hq=2, hkv=2)
    keys = video_cube_keys({0: k[None], 3: 2 * k[None]}, layout)
    torch.testing.assert_close(keys.mean_keys[3], 2 * cube_mean_keys(k, layout))
    with pytest.raises(AdasparkError, match="prefill the video"):
        video_cube_keys({0: k[None, :, :5]}, layout)
