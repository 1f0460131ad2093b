"""Decoding through the whole tiny Qwen2.5-VL: one shared cache for every question, rolled back after each
answer, gives the tokens of a plain reference loop (a fresh DynamicCache copy per question); sampling
with a seed is repeatable; the per-step hook sees every distribution; sparse decoding is gone."""

import copy
import json

import pytest
import torch
from transformers import DynamicCache

from test_model import QUESTION, synthetic_video

from adaspark_cli.adapters import sparsify, unsparsify
from adaspark_cli.checkpoint import load_model
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.errors import AdasparkError, ConfigError
from adaspark_cli.qa import DecodeOutcome, Sampling, VideoQA, decode_tokens

STEPS = 6
QUESTIONS = [QUESTION, "what color is the sky in this video?", "how many people?"]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(str(tiny_checkpoint))


@pytest.fixture(params=["adaspark", "dense"])
def session(request, loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.5, ffn_top_p=0.5), enabled=request.param == "adaspark")
    qa = VideoQA(model, processor, state)
    prompt = qa.prepare_video(synthetic_video(seed=4), max_pixels=168 * 112)
    yield qa, prompt
    unsparsify(model)


@torch.inference_mode()
def reference_answers(qa: VideoQA, prompt, questions, max_new_tokens):
    """Greedy answers the straightforward way: the prefix prefilled into a DynamicCache, deep-copied for each
    question, the question and each token run through the model's forward, argmax each time."""
    model, state, device = qa.model, qa.state, qa.device
    video_cache = DynamicCache()
    with state.forward_context(layout=prompt.layout.to(device), offset=0, stats=None):
        model(
            input_ids=prompt.input_ids.to(device),
            pixel_values_videos=prompt.pixel_values_videos.to(device, model.dtype),
            video_grid_thw=prompt.video_grid_thw.to(device),
            position_ids=prompt.positions.to(device),
            use_cache=True,
            cache=video_cache,
        )
    answers = []
    for question in questions:
        cache = copy.deepcopy(video_cache)
        ids = qa.question_ids(question)[None]
        position = prompt.next_position
        positions = torch.arange(position, position + ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        tokens, all_logits = [], []
        while True:
            logits = model(input_ids=ids, position_ids=positions, use_cache=True, cache=cache).logits[0, -1]
            all_logits.append(logits.clone())
            position += ids.shape[1]
            token = int(torch.argmax(logits))
            if token in qa.stop_ids:
                break
            tokens.append(token)
            if len(tokens) == max_new_tokens:
                break
            ids = torch.tensor([[token]])
            positions = torch.full((3, 1, 1), position)
        answers.append((tokens, torch.stack(all_logits)))
    return answers


def session_answer(qa: VideoQA, prefix, question, max_new_tokens=STEPS, **kwargs):
    """Text, per-step logits (through the public hook) and the result of one answer."""
    steps = []
    stream = qa.answer(
        prefix, question, max_new_tokens=max_new_tokens, on_step=lambda i, x: steps.append((i, x.clone())), **kwargs
    )
    text = "".join(stream)
    assert [i for i, _ in steps] == list(range(len(steps)))  # every step, in order, the question's first
    return text, torch.stack([x for _, x in steps]), stream.result


def prefix_tensors(prefix):
    return [(layer.keys.clone(), layer.values.clone()) for layer in prefix.cache.layers]


def test_shared_cache_answers_equal_the_reference_loop_question_after_question(session):
    qa, prompt = session
    expected = reference_answers(qa, prompt, QUESTIONS, STEPS)
    prefix = qa.prefill_video(prompt)
    for question, (tokens, logits) in zip(QUESTIONS, expected, strict=True):
        steps = []
        stream = qa.answer(prefix, question, max_new_tokens=STEPS, on_step=lambda i, x: steps.append(x.clone()))
        list(stream)
        generated = [int(torch.argmax(x)) for x in steps][: stream.result.generated_tokens]
        assert generated == tokens
        assert stream.result.generated_tokens == len(tokens) > 0
        torch.testing.assert_close(torch.stack(steps), logits)
        expected = {"steps": len(steps) - 1, "temperature": 0.0, "seed": None, "cuda_graph": False}
        assert stream.result.to_json()["decode"] == expected
        assert prefix.cache.length == prompt.length


def test_rollback_leaves_the_prefix_bit_identical_and_in_place(session):
    qa, prompt = session
    prefix = qa.prefill_video(prompt)
    before = prefix_tensors(prefix)
    buffer = prefix.cache.layers[0]._keys.data_ptr()
    first = session_answer(qa, prefix, QUESTIONS[0])
    stream = qa.answer(prefix, QUESTIONS[1], max_new_tokens=STEPS)
    for _ in stream:
        break  # leaving an answer early rolls back too
    assert prefix.cache.length == prompt.length and not prefix.answering
    again = session_answer(qa, prefix, QUESTIONS[0])
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    for (k0, v0), layer in zip(before, prefix.cache.layers, strict=True):
        assert torch.equal(layer.keys, k0) and torch.equal(layer.values, v0)
    assert prefix.cache.layers[0]._keys.data_ptr() == buffer  # never copied: the same storage throughout


def test_a_question_longer_than_the_tail_grows_the_cache_once_with_the_same_answer(session):
    qa, prompt = session
    expected = reference_answers(qa, prompt, QUESTIONS[:2], STEPS)
    prefix = qa.prefill_video(prompt, tail_tokens=2)
    assert prefix.cache.layers[0].capacity == prompt.length + 2
    for question, (tokens, logits) in zip(QUESTIONS[:2], expected, strict=True):
        _, steps, result = session_answer(qa, prefix, question)
        torch.testing.assert_close(steps, logits)
        assert [int(torch.argmax(x)) for x in steps][: result.generated_tokens] == tokens
    assert prefix.cache.layers[0].capacity >= prompt.length + len(qa.question_ids(QUESTIONS[0])) + STEPS


def test_one_answer_at_a_time_per_prefix(session):
    qa, prompt = session
    prefix = qa.prefill_video(prompt)
    first = iter(qa.answer(prefix, QUESTIONS[0], max_new_tokens=STEPS))
    next(first)
    with pytest.raises(AdasparkError, match="still being decoded"):
        list(qa.answer(prefix, QUESTIONS[1], max_new_tokens=STEPS))
    first.close()
    assert prefix.cache.length == prompt.length
    assert session_answer(qa, prefix, QUESTIONS[1])[2].generated_tokens > 0


def test_sampling_with_a_seed_is_repeatable_and_keeps_the_sparsity(session):
    qa, prompt = session
    prefix = qa.prefill_video(prompt)
    greedy = session_answer(qa, prefix, QUESTION, max_new_tokens=8)
    hot = Sampling(temperature=5.0, seed=7)
    a = session_answer(qa, prefix, QUESTION, max_new_tokens=8, sampling=hot)
    b = session_answer(qa, prefix, QUESTION, max_new_tokens=8, sampling=hot)
    other = session_answer(qa, prefix, QUESTION, max_new_tokens=8, sampling=Sampling(temperature=5.0, seed=8))
    assert a[2].answer == b[2].answer and torch.equal(a[1], b[1])
    assert a[2].answer != other[2].answer  # 8 draws at T=5 from a random model's vocabulary: never all equal
    assert a[2].answer != greedy[2].answer
    assert torch.equal(a[1][0], greedy[1][0])  # the question's distribution does not depend on the sampling
    assert a[2].to_json()["layers"] == greedy[2].to_json()["layers"]
    assert a[2].to_json()["decode"]["temperature"] == 5.0 and a[2].to_json()["decode"]["seed"] == 7


@pytest.mark.parametrize("kwargs, message", [({"temperature": -1.0}, "temperature"),
                                             ({"temperature": float("nan")}, "temperature"),
                                             ({"temperature": 1.0, "seed": -3}, "seed")])
def test_bad_sampling_values_are_refused(kwargs, message):
    with pytest.raises(AdasparkError, match=message):
        Sampling(**kwargs)


def test_decode_loop_stops_and_never_runs_a_forward_after_the_last_token():
    vocab = 5
    calls = []

    def logits_for(token):
        out = torch.zeros(vocab)
        out[token] = 1.0
        return out

    def step(token):
        calls.append(token)
        return logits_for((token + 1) % vocab)

    seen = []
    outcome = DecodeOutcome(tokens=[])
    tokens = list(decode_tokens(logits_for(1), step, stop_ids={4}, max_new_tokens=10, sampling=Sampling(),
                                on_step=lambda i, x: seen.append(i), outcome=outcome))
    assert tokens == [1, 2, 3] and outcome.stopped == "eos" and outcome.steps == 3 and seen == [0, 1, 2, 3]
    calls.clear()
    outcome = DecodeOutcome(tokens=[])
    tokens = decode_tokens(logits_for(0), step, stop_ids={4}, max_new_tokens=2, sampling=Sampling(), outcome=outcome)
    assert list(tokens) == [0, 1]
    assert calls == [0] and outcome.stopped == "max_new_tokens" and outcome.steps == 1


def test_an_old_checkpoint_block_with_decode_top_p_loads_and_decodes_densely():
    old = {**AdaSparkConfig().to_dict(), "decode_top_p": 0.8}
    assert AdaSparkConfig.from_dict(old) == AdaSparkConfig()
    assert "decode_top_p" not in AdaSparkConfig().to_dict()
    with pytest.raises(ConfigError, match="unknown keys"):  # other unknown keys are still refused
        AdaSparkConfig.from_dict({"decode_top_q": 0.8})


def test_ask_sampling_flags(runner, clip, tiny_checkpoint):
    from adaspark_cli.cli.app import app

    args = ["ask", str(clip), "what?", "again?", "--model", str(tiny_checkpoint), "--json", "-q", "--cube", "1x2x2",
            "--max-new-tokens", "6"]

    def answers(*extra):
        res = runner.invoke(app, [*args, *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return [json.loads(line) for line in res.stdout.splitlines()]

    first, second = answers("--temperature", "3", "--seed", "11"), answers("--temperature", "3", "--seed", "11")
    assert [r["answer"] for r in first] == [r["answer"] for r in second]
    assert first[0]["decode"]["temperature"] == 3.0 and first[0]["decode"]["seed"] == 11
    greedy = answers()
    assert greedy[0]["decode"] == {"steps": greedy[0]["decode"]["steps"], "temperature": 0.0, "seed": None, "cuda_graph": False}
    assert [r["layers"] for r in greedy] == [r["layers"] for r in first]  # sampling leaves the sparsity alone


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "-0.5"], "--temperature must be a number >= 0"),
        (["--temperature", "inf"], "--temperature must be a number >= 0"),
        (["--seed", "3"], "--seed only applies to sampled answers; add --temperature"),
        (["--temperature", "1", "--seed", "-1"], "--seed must be between 0"),
        (["--decode-top-p", "0.3"], "--decode-top-p"),  # removed: an unknown option now
    ],
)
def test_ask_bad_sampling_flags_are_one_line_usage_errors(runner, clip, tiny_checkpoint, extra, message):
    from adaspark_cli.cli.app import app

    res = runner.invoke(app, ["ask", str(clip), "what?", "--model", str(tiny_checkpoint), *extra])
    assert res.exit_code == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_the_fixed_shape_decode_step_gives_the_same_answers_and_rollback(session):
    # the step a CUDA graph captures, run eagerly: whole buffer, masked, device-tensor write index
    qa, prompt = session
    expected = reference_answers(qa, prompt, QUESTIONS, STEPS)
    prefix = qa.prefill_video(prompt)
    before = prefix_tensors(prefix)
    qa.decode_step = "static"
    try:
        for question, (tokens, logits) in zip(QUESTIONS, expected, strict=True):
            _, steps, result = session_answer(qa, prefix, question)
            assert [int(torch.argmax(x)) for x in steps][: result.generated_tokens] == tokens
            torch.testing.assert_close(steps, logits)
            assert result.to_json()["decode"]["cuda_graph"] is False
        assert prefix.static_step is not None and prefix.static_step.graph is None
        with pytest.raises(AdasparkError, match="CUDA device"):
            qa.decode_step = "graph"
            list(qa.answer(prefix, QUESTION, max_new_tokens=2))
    finally:
        del qa.decode_step
    assert prefix.cache.length == prompt.length
    for (k0, v0), layer in zip(before, prefix.cache.layers, strict=True):
        assert torch.equal(layer.keys, k0) and torch.equal(layer.values, v0)


def test_answers_never_copy_the_cache_and_the_tail_fits_the_questions(session, monkeypatch):
    qa, prompt = session
    longest = max(len(qa.question_ids(q)) for q in QUESTIONS)
    tail = qa.tail_tokens_for(QUESTIONS, 2000)
    assert tail == longest + 2000
    prefix = qa.prefill_video(prompt, tail_tokens=tail)
    buffer = prefix.cache.layers[0]._keys.data_ptr()

    def no_copy(*_args, **_kwargs):
        raise AssertionError("an answer copied something")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    for question in QUESTIONS:
        assert session_answer(qa, prefix, question, max_new_tokens=4)[2].generated_tokens > 0
    assert prefix.cache.layers[0]._keys.data_ptr() == buffer and prefix.cache.capacity == prompt.length + tail
