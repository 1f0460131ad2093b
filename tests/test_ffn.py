"""AdaS-FFN: kept sets, mean compensation, and the gathered path against the reference."""

import pytest
import torch

from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.ffn import adas_ffn_gathered, adas_ffn_reference, select_ffn_tokens


def make_ffn(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 3 * d, generator=g), torch.randn(3 * d, d, generator=g)
    return lambda x: torch.nn.functional.silu(x @ w1) @ w2


def direct_kept_set(norms, top_p):
    """Sort one cube's norms descending and take tokens until their share reaches top_p."""
    share = norms / norms.sum()
    order = sorted(range(len(norms)), key=lambda i: -norms[i].item())
    kept, mass = set(), 0.0
    for i in order:
        if top_p < 1.0 and mass >= top_p:
            break
        kept.add(i)
        mass += share[i].item()
    return kept


@pytest.mark.parametrize("top_p", [0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("grid,cube", [((3, 4, 5), (2, 2, 2)), ((2, 3, 3), (1, 8, 8)), ((1, 1, 1), (2, 2, 2))],
                         ids=["partial", "big-cube", "one-token"])
def test_kept_sets_and_compensation_match_direct_computation(top_p, grid, cube):
    torch.manual_seed(0)
    span = VideoSpan(2, grid)
    layout = cube_layout([span], span.end + 3, cube)
    x = torch.randn(layout.seq_len, 6) * torch.rand(layout.seq_len, 1) * 3
    ffn = make_ffn(6)
    out, keep = adas_ffn_reference(ffn, x, layout.cube_of_token, layout.num_cubes, top_p)
    full = ffn(x)
    video_idx = layout.is_video.nonzero().squeeze(1).tolist()
    keep_of = dict(zip(video_idx, keep.tolist()))
    for c in range(layout.num_cubes):
        members = [i for i in video_idx if layout.cube_of_token[i] == c]
        want = direct_kept_set(x[members].norm(dim=-1), top_p)
        got = {j for j, i in enumerate(members) if keep_of[i]}
        assert got == want, f"cube {c}"
        mean = full[[members[j] for j in want]].mean(0)
        for j, i in enumerate(members):
            torch.testing.assert_close(out[i], full[i] if j in want else mean, rtol=1e-5, atol=1e-5)
    text = ~layout.is_video
    torch.testing.assert_close(out[text], full[text])


@pytest.mark.parametrize("top_p", [0.3, 0.6, 1.0])
def test_gathered_equals_reference(top_p):
    torch.manual_seed(1)
    layout = cube_layout([VideoSpan(4, (5, 3, 7)), VideoSpan(120, (2, 2, 2))], 130, (2, 2, 4))
    x = torch.randn(130, 8)
    ffn = make_ffn(8, seed=1)
    ref, keep_ref = adas_ffn_reference(ffn, x, layout.cube_of_token, layout.num_cubes, top_p)
    fast, keep_fast = adas_ffn_gathered(ffn, x, layout.cube_of_token, layout.num_cubes, top_p)
    assert torch.equal(keep_ref, keep_fast)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_every_cube_keeps_at_least_one_token():
    norms = torch.rand(40)
    cubes = torch.arange(40) % 7
    keep = select_ffn_tokens(norms, cubes, 7, 1e-6)
    assert torch.bincount(cubes[keep], minlength=7).tolist() == [1] * 7


def test_p_one_keeps_everything_and_is_the_dense_ffn():
    layout = cube_layout([VideoSpan(1, (2, 2, 2))], 10, (2, 2, 2))
    x = torch.randn(10, 4)
    ffn = make_ffn(4)
    out, keep = adas_ffn_gathered(ffn, x, layout.cube_of_token, layout.num_cubes, 1.0)
    assert keep.all()
    torch.testing.assert_close(out, ffn(x))


@pytest.mark.parametrize("top_p", [0.3, 1.0])
def test_batched_ffn_is_each_sequence_alone(top_p):
    """The training fine-tune's batches (sequences sharing one layout): each keeps and compensates its own cubes."""
    from adaspark_cli.adapters.sparse import _adas_ffn_batch

    torch.manual_seed(2)
    layout = cube_layout([VideoSpan(4, (5, 3, 7)), VideoSpan(120, (2, 2, 2))], 130, (2, 2, 4))
    x = torch.randn(3, 130, 8) * torch.rand(3, 130, 1) * 3
    ffn = make_ffn(8, seed=2)
    out = _adas_ffn_batch(ffn, x, layout.cube_of_token, layout.num_cubes, top_p)
    for i in range(3):
        alone, _ = adas_ffn_gathered(ffn, x[i], layout.cube_of_token, layout.num_cubes, top_p)
        torch.testing.assert_close(out[i], alone)
    if top_p < 1.0:  # the means differ between sequences: nothing was pooled across them
        assert not torch.allclose(out[0, 4:8], out[1, 4:8])
