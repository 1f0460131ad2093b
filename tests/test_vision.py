"""The fast vision tower (issue 6): same output as transformers' stock tower, reversible, keys unchanged."""

import pytest
import torch

from adaspark_cli.adapters.vision import (
    fast_vision,
    fast_vision_forward,
    restore_vision,
    vision_state,
    vision_tower,
)
from adaspark_cli.checkpoint import load_model
from adaspark_cli.errors import AdasparkError

# tiny tower: window 112 px = 4 x 4 merge units = 8 x 8 patches; grids are (t, h, w) in patches
GRIDS = [
    [(1, 2, 2)],  # one merge unit
    [(2, 10, 14)],  # 5 x 7 merge units: edge windows smaller than the rest
    [(3, 16, 8)],  # 8 x 4 merge units: divisible, the padded-out windows are empty
    [(2, 6, 10), (1, 18, 4)],  # two videos in one call
]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """The tiny model with sharper vision attention: with its 0.02-std weights attention is near-uniform, and
    wrong windows or rotary would change the output by only ~1e-5; here they change it by ~10%."""
    net, _ = load_model(str(tiny_checkpoint))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in vision_tower(net).blocks:
            block.attn.qkv.weight.mul_(10)
            block.attn.qkv.bias.copy_(torch.randn(block.attn.qkv.bias.shape, generator=gen))
    return net


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert float((actual - expected).norm() / expected.norm()) < 1e-5


def pixels(tower, grid):
    n = sum(t * h * w for t, h, w in grid)
    width = tower.patch_embed.proj.weight[0].numel()
    return torch.randn(n, width), torch.tensor(grid)


def run(tower, x, grid_thw):
    with torch.inference_mode():
        return tower(x, grid_thw=grid_thw, return_dict=True)


@pytest.mark.parametrize("backend", ["auto", "masked", "loop"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "+".join("x".join(map(str, v)) for v in g))
def test_fast_tower_matches_stock(model, grid, backend):
    tower = vision_tower(model)
    x, grid_thw = pixels(tower, grid)
    stock = run(tower, x, grid_thw)
    fast_vision(model, backend=backend)
    try:
        fast = run(tower, x, grid_thw)
        again = run(tower, x, grid_thw)  # from the per-grid cache
        assert vision_state(model).last_backend == ("masked" if backend == "auto" else backend)
    finally:
        restore_vision(model)
    for out in (fast, again):
        assert_close(out.pooler_output, stock.pooler_output)
        assert_close(out.last_hidden_state, stock.last_hidden_state)


def test_through_get_video_features(model):
    grid = [(2, 6, 10), (1, 18, 4)]
    x, grid_thw = pixels(vision_tower(model), grid)
    with torch.inference_mode():
        stock = model.model.get_video_features(x, grid_thw).pooler_output
        fast_vision(model)
        try:
            fast = model.model.get_video_features(x, grid_thw).pooler_output
        finally:
            restore_vision(model)
    assert [s.shape for s in fast] == [s.shape for s in stock] == [(30, 64), (18, 64)]
    for f, s in zip(fast, stock, strict=True):
        assert_close(f, s)


def test_gradients_match_stock(model):
    """With autograd on (training), the fast tower gives the stock gradients."""
    tower = vision_tower(model)
    x, grid_thw = pixels(tower, [(2, 10, 14)])
    params = [tower.blocks[0].attn.qkv.weight, tower.blocks[1].mlp.up_proj.weight, tower.blocks[0].norm1.weight]

    def grads():
        tower.zero_grad()
        tower(x, grid_thw=grid_thw, return_dict=True).pooler_output.pow(2).sum().backward()
        return [p.grad.clone() for p in params]

    stock = grads()
    fast_vision(model)
    try:
        fast = grads()
    finally:
        restore_vision(model)
        tower.zero_grad(set_to_none=True)
    for f, s in zip(fast, stock, strict=True):
        assert float((f - s).norm() / s.norm()) < 1e-5


def test_autocast_training_runs_in_the_autocast_dtype(model):
    """Training keeps float32 weights under bf16 autocast: the fast tower then computes in bf16 (so CUDA can
    take varlen attention) and stays within bf16 tolerance of the stock tower under the same autocast."""
    tower = vision_tower(model)
    x, grid_thw = pixels(tower, [(2, 10, 14)])

    def out():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tower(x, grid_thw=grid_thw, return_dict=True).pooler_output

    stock = out()
    fast_vision(model)
    try:
        fast = out()
        state = vision_state(model)
    finally:
        restore_vision(model)
    assert fast.dtype == torch.bfloat16 and state.last_backend == "masked"
    assert float((fast.float() - stock.float()).norm() / stock.float().norm()) < 3e-2


def test_index_work_is_cached_per_grid(model):
    tower = vision_tower(model)
    fast_vision(model)
    try:
        state = vision_state(model)
        x, grid_thw = pixels(tower, [(2, 10, 14)])
        run(tower, x, grid_thw)
        plan = next(iter(state.plans.values()))
        run(tower, torch.randn_like(x), grid_thw)
        assert len(state.plans) == 1 and next(iter(state.plans.values())) is plan
        x2, grid2 = pixels(tower, [(1, 4, 4)])
        run(tower, x2, grid2)
        assert len(state.plans) == 2
        assert plan.window.lengths == [64, 48, 16, 12] * 2  # 4x4 merge-unit windows, edge windows smaller
        assert plan.full.lengths == [140, 140] and plan.full.max_len == 140
    finally:
        restore_vision(model)


def test_restore_gives_back_the_stock_tower_and_keys_are_unchanged(model):
    tower = vision_tower(model)
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    x, grid_thw = pixels(tower, [(2, 10, 14)])
    stock = run(tower, x, grid_thw)
    fast_vision(model)
    fast_vision(model)  # idempotent
    assert tower.forward.__func__ is fast_vision_forward
    assert list(model.state_dict()) == keys
    restore_vision(model)
    assert "forward" not in tower.__dict__ and vision_state(model) is None
    assert tower.forward.__func__ is type(tower).forward
    assert list(model.state_dict()) == keys
    for k, v in tower.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(run(tower, x, grid_thw).pooler_output, stock.pooler_output, rtol=0, atol=0)
    restore_vision(model)  # a no-op when not attached


def test_stock_only_requests_go_to_the_stock_forward(model):
    tower = vision_tower(model)
    x, grid_thw = pixels(tower, [(1, 4, 4)])
    fast_vision(model)
    try:
        with torch.inference_mode():
            out = tower(x, grid_thw=grid_thw, return_dict=True, output_hidden_states=True)
    finally:
        restore_vision(model)
    assert out.hidden_states is not None and len(out.hidden_states) >= len(tower.blocks)


def test_errors(model):
    with pytest.raises(AdasparkError, match="vision tower"):
        fast_vision(torch.nn.Linear(2, 2))
    with pytest.raises(AdasparkError, match="backend"):
        fast_vision(model, backend="flash")
    assert vision_state(model) is None
    fast_vision(model, backend="varlen")
    try:
        x, grid_thw = pixels(vision_tower(model), [(1, 4, 4)])
        with pytest.raises(AdasparkError, match="varlen"):  # float32 on the CPU
            run(vision_tower(model), x, grid_thw)
        with pytest.raises(AdasparkError, match="patches"):
            fast_vision(model)
            run(vision_tower(model), x[:-4], grid_thw)
    finally:
        restore_vision(model)
