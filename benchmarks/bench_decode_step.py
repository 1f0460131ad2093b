"""Decode benchmark of the path `ask` runs (issue 13, part 6): the session's own decode loop.

A Qwen2.5-VL-7B-shaped language model (28 layers, hidden 3584, 28 query / 4 KV heads, head dim 128,
FFN 18944, vocab 152064, bf16, random weights; bench_prefill.build_model) behind a `VideoQA` session
with the bundled model's processor (its chat template and tokenizer; the model's special token ids
are set to the tokenizer's). The video prompt is built as the pipelined `ask` path builds it
(`prompt_format.prompt_ids`, `video_prompt`) with random vision-tower output (`video_embeds`), so everything after
the vision tower is `ask`'s own code: `prefill_video` into the shared cache, `answer` (question prefill,
`qa.decode.decode_tokens`, the tokenizer's incremental decode, the rollback).

Random weights never pick the tokenizer's stop tokens reliably, so `qa.stop_ids` is emptied and every
answer runs exactly --tokens steps (argmax ids past the small tokenizer's vocabulary decode to no text,
which costs the same).

1. Decode steps at each size in --sizes (video tokens; the context is the prefix + question + answer):
   per-step wall ms from the public `on_step` hook (synchronised, first --warmup steps dropped,
   median), and ms/token as `ask --json` reports it (decode_seconds / steps). Dense prefill (the decode
   is dense either way). Each step kind of the session (`VideoQA.decode_step`): "dynamic" (eager,
   attention over the filled cache) and, on CUDA, "graph" (the fixed-shape step captured once per video
   and replayed: what `ask` runs on a GPU); the --smoke run takes "static" (the same step, eager) instead.
   On CUDA first, on layer 0's real cache (`_decode_kernels.py`): attention/decode.py's kernels for a
   decode step and for a 24-token question's prefill against their float32 reference and against the
   best dense alternative, each launch choice timed inside a CUDA graph; the fastest is kept for the runs.
2. Three questions in a row at --ask-size, as `adaspark ask video q1 q2 q3` runs them (--mode:
   AdaSpark default settings, or dense): each question's time to first token (`timing.first_token_s`,
   the first including the video prefill) and its own prefill, decode ms/token, and peak device memory
   during the questions against the weights plus one video cache (the target: + 5 % at most).

Usage (GPU machine, repository root):
    PYTHONPATH=src python3 benchmarks/bench_decode_step.py --out $OUT
CPU smoke run (tiny shapes; checks the code path, numbers meaningless):
    PYTHONPATH=src python3 benchmarks/bench_decode_step.py --smoke
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import traceback
from typing import Any

import torch

from _common import environment, log_stamped, out_file, sync, write_json  # this folder is on sys.path; puts src/ there too
from _decode_kernels import captured_graph, decode_kernel_error, decode_kernel_sweep, question_kernel_sweep
from _prefill_model import GRID_HW, build_model

from adaspark_cli.adapters import sparsify
from adaspark_cli.adapters.sparse import ATTN_NAME
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.qa import VideoQA, bundled_model_dir
from adaspark_cli.qa.session import VideoPrefix, VideoPrompt

QUESTIONS = ("What happens after the door opens?", "What color is the car?", "How many people enter the room?")
log = log_stamped


def build_session(smoke: bool, device: torch.device) -> VideoQA:
    """The 7B-shaped (or, smoke, tiny) random model with the bundled processor's token ids, sparsified."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(bundled_model_dir())
    model = build_model(smoke, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    model.config.image_token_id = processor.image_token_id
    model.config.video_token_id = processor.video_token_id
    model.config.vision_start_token_id = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    model.config.vision_end_token_id = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    state = sparsify(model, AdaSparkConfig())
    qa = VideoQA(model, processor, state)
    qa.stop_ids = set()  # random weights: run every answer to --tokens
    return qa


def video_prompt(qa: VideoQA, video_tokens: int) -> VideoPrompt:
    """The pipelined `ask` prompt for a video of `video_tokens` merged tokens (16 x 16 per frame pair),
    with random vision-tower output in place of the tower's."""
    t = max(1, video_tokens // (GRID_HW[0] * GRID_HW[1]))
    merge = qa.model.config.vision_config.spatial_merge_size
    grid = torch.tensor([[t, GRID_HW[0] * merge, GRID_HW[1] * merge]])
    n = t * GRID_HW[0] * GRID_HW[1]
    ids = qa.prompt_format.prompt_ids(n)
    types = (ids == qa.processor.video_token_id).to(torch.int64) * 2
    prompt = qa.video_prompt(ids, types, grid, [1.0])
    g = torch.Generator(device=qa.device).manual_seed(n)
    hidden = qa.model.config.text_config.hidden_size
    prompt.video_embeds = (torch.randn(n, hidden, generator=g, device=qa.device) * 0.5).to(qa.model.dtype)
    prompt.frames = 2 * t
    return prompt


def answer_steps(qa: VideoQA, prefix: VideoPrefix, question: str, tokens: int) -> tuple[list[float], dict[str, Any]]:
    """One answer through the session: wall ms of each decode step (from the on_step hook) and its JSON."""
    stamps: list[float] = []

    def on_step(index: int, logits: torch.Tensor) -> None:
        sync(qa.device)
        stamps.append(time.perf_counter())

    stream = qa.answer(prefix, question, max_new_tokens=tokens, on_step=on_step)
    for _ in stream:
        pass
    steps = [1e3 * (b - a) for a, b in zip(stamps, stamps[1:])]
    return steps, stream.result.to_json()


def weight_bytes(qa: VideoQA) -> int:
    """Bytes of weights a decode step reads: the language model's layers and norm, and lm_head
    (one embedding row only, counted as none)."""
    lm = qa.model.model.language_model
    params = [p for name, p in lm.named_parameters() if not name.startswith("embed_tokens")]
    params += list(qa.model.lm_head.parameters())
    return sum(p.numel() * p.element_size() for p in params)


def kv_bytes(prefix: VideoPrefix, length: int) -> int:
    """Bytes of K and V a step at `length` tokens reads (all layers)."""
    layer = prefix.cache.layers[0]
    assert layer.keys is not None
    _, heads, _, dim = layer.keys.shape
    return 2 * len(prefix.cache.layers) * heads * dim * length * layer.keys.element_size()


def bench_size(qa: VideoQA, video_tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    prompt = video_prompt(qa, video_tokens)
    with qa.state.override(enabled=False):
        prefix = qa.prefill_video(prompt)
    log(f"  prefilled {prompt.length} tokens in {prefix.seconds:.2f} s")
    length = prompt.length + len(qa.question_ids(QUESTIONS[0])) + args.tokens // 2  # the middle step's context
    row: dict[str, Any] = {"video_tokens": prompt.video_tokens, "context_tokens": length, "weight_gb": weight_bytes(qa) / 1e9,
                           "kv_gb": kv_bytes(prefix, length) / 1e9, "cache_buffer_gb": prefix.cache.nbytes() / 1e9, "steps": {}}
    if qa.device.type == "cuda":
        row["decode_kernel_sweep"] = decode_kernel_sweep(qa, prefix)
        row["question_kernel_sweep"] = question_kernel_sweep(qa, prefix)
        row["decode_kernel_max_abs_err"] = decode_kernel_error(qa, prefix)
        log(f"  decode kernel against its reference (layer 0's cache, bf16): max abs err {row['decode_kernel_max_abs_err']:.2e}")
    kinds = ["dynamic", "graph" if qa.device.type == "cuda" else "static"]
    answers = {}
    for kind in kinds:
        qa.decode_step = kind
        try:
            answer_steps(qa, prefix, QUESTIONS[0], min(args.tokens, 8))  # warm-up answer (captures the graph)
            steps, result = answer_steps(qa, prefix, QUESTIONS[0], args.tokens + args.warmup)
        finally:
            del qa.decode_step
        timed = sorted(steps[args.warmup :])
        r = {"step_ms_median": statistics.median(timed), "step_ms_p10": timed[len(timed) // 10],
             "step_ms_p90": timed[(9 * len(timed)) // 10],
             "ask_ms_per_token": 1e3 * result["decode_seconds"] / max(1, result["generated_tokens"]),
             "cuda_graph": result["decode"]["cuda_graph"], "note": result["decode"].get("note")}
        r["effective_gbs"] = (row["weight_gb"] + row["kv_gb"]) / r["step_ms_median"] * 1e3
        row["steps"][kind] = r
        answers[kind] = result["answer"]
        log(f"  {kind}: {r['step_ms_median']:.2f} ms/step (p10 {r['step_ms_p10']:.2f}, p90 {r['step_ms_p90']:.2f}); "
            f"ask {r['ask_ms_per_token']:.2f} ms/token; {row['weight_gb']:.2f} GB weights + {row['kv_gb']:.2f} GB KV "
            f"-> {r['effective_gbs']:.0f} GB/s" + (f"; {r['note']}" if r["note"] else ""))
    if qa.device.type == "cuda":
        ref = reference_step_ms(qa, prefix, length)
        row["reference_graph_step_ms"] = ref
        for r in row["steps"].values():
            r["over_reference"] = r["step_ms_median"] / ref
        log(f"  reference (exact-length cache, transformers' SDPA, graphed at one position): {ref:.2f} ms/step; "
            + ", ".join(f"{k} {r['over_reference']:.2f}x" for k, r in row["steps"].items()))
    row["same_answers"] = len(set(answers.values())) == 1  # greedy: the step kinds must agree token for token
    if not row["same_answers"]:
        log(f"  the step kinds gave different answers: {answers}")
    del prefix
    return row


def reference_step_ms(qa: VideoQA, prefix: VideoPrefix, context: int, replays: int = 40) -> float:
    """The best dense step at batch 1 in this run, as a yardstick (issue 13's "graphed dense step"): one
    step at a fixed context of `context` tokens over a cache of exactly that length (no mask), through
    transformers' SDPA, captured in a CUDA graph and replayed at the same position. The cached values
    past the prefix are zeros: timing only."""
    cache, model = prefix.cache, qa.model
    base = cache.length
    cache.reserve(context + 8)
    cache.advance(context - 1 - base)
    token = torch.zeros((1, 1), dtype=torch.long, device=qa.device)
    position = torch.full((3, 1, 1), context, dtype=torch.long, device=qa.device)

    def step() -> torch.Tensor:
        out = model(input_ids=token, position_ids=position, use_cache=True, logits_to_keep=1, **{qa._cache_kw: cache})
        cache.truncate(context - 1)  # outside the graph this undoes the append; the replays write the same slot
        return out.logits

    model.set_attn_implementation({"text_config": "sdpa"})
    try:
        with torch.inference_mode():  # as the session runs (its cache tensors are inference tensors)
            graph = captured_graph(step, warmup=2)
            t0 = time.perf_counter()
            for _ in range(replays):
                graph.replay()
            torch.cuda.synchronize()
            ms = 1e3 * (time.perf_counter() - t0) / replays
        del graph
    finally:
        model.set_attn_implementation({"text_config": ATTN_NAME})
        cache.truncate(base)
    return ms


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak RSS (Linux: KiB)


def three_questions(qa: VideoQA, video_tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    """`adaspark ask video q1 q2 q3`, after the vision tower: each question's wait and the peak memory."""
    prompt = video_prompt(qa, video_tokens)
    dense = args.mode == "dense"
    if qa.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(qa.device)
    before = torch.cuda.memory_allocated(qa.device) if qa.device.type == "cuda" else peak_bytes(qa.device)
    with qa.state.override(enabled=not dense):
        prefix = qa.prefill_video(prompt)
        prefill_peak = peak_bytes(qa.device)
        if qa.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(qa.device)
        rows = []
        for question in QUESTIONS:
            steps, result = answer_steps(qa, prefix, question, args.ask_tokens)
            t = result["timing"]
            reused = result["video_prefill_reused"]
            # the first question's prefill_s also holds the video's language-model prefill
            own = t["prefill_s"] if reused else t["prefill_s"] - (prefix.seconds - prefix.vision_seconds)
            rows.append({"question": question, "first_token_s": t["first_token_s"], "question_prefill_s": own,
                         "reused": reused, "decode_ms_per_token": statistics.median(steps)})
            log(f"  {question!r}: first token after {t['first_token_s'] * 1e3:.1f} ms"
                f"{' (video prefill reused)' if result['video_prefill_reused'] else ' (video prefill included)'}, "
                f"decode {rows[-1]['decode_ms_per_token']:.2f} ms/token")
    questions_peak = peak_bytes(qa.device)
    cache = prefix.cache.nbytes()
    out = {"mode": args.mode, "video_tokens": prompt.video_tokens, "prefix_tokens": prompt.length, "questions": rows,
           "video_prefill_s": prefix.seconds, "cache_gb": cache / 1e9, "memory_before_gb": before / 1e9,
           "peak_prefill_gb": prefill_peak / 1e9, "peak_questions_gb": questions_peak / 1e9}
    if qa.device.type == "cuda":
        # the target: weights (already allocated before) + one video cache, + 5 %
        out["peak_questions_over_weights_plus_cache"] = questions_peak / (before + cache)
        log(f"  peak during the questions {questions_peak / 1e9:.2f} GB against weights + one cache "
            f"{(before + cache) / 1e9:.2f} GB ({out['peak_questions_over_weights_plus_cache']:.3f}x)")
    del prefix
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16384,65536,131072", help="video tokens for the decode steps (multiples of 256)")
    ap.add_argument("--tokens", type=int, default=64, help="decode steps timed per size")
    ap.add_argument("--warmup", type=int, default=8, help="first decode steps not timed")
    ap.add_argument("--ask-size", type=int, default=65536, help="video tokens of the three-question run (0: skip)")
    ap.add_argument("--ask-tokens", type=int, default=32, help="answer tokens per question there")
    ap.add_argument("--mode", choices=("adaspark", "dense"), default="adaspark", help="prefill of the three-question run")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the code path only")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.tokens, args.warmup = "512,1024", 6, 2
        args.ask_size, args.ask_tokens = 512, 4
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    results: dict[str, Any] = {"env": environment(device.type == "cuda"), "sizes": {}, "skipped": []}
    log(f"environment: {results['env']}")

    def save() -> None:
        write_json(results, out_file(args.out, "bench_decode_step.json"))

    qa = build_session(args.smoke, device)
    for n in [int(s) for s in args.sizes.split(",") if s]:
        log(f"== {n} video tokens ==")
        try:
            results["sizes"][str(n)] = bench_size(qa, n, args)
        except Exception as e:  # noqa: BLE001  (one size failing, e.g. out of memory, must not lose the others)
            traceback.print_exc()
            results["skipped"].append({"video_tokens": n, "why": f"{type(e).__name__}: {str(e)[:300]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()
    if args.ask_size:
        log(f"== three questions at {args.ask_size} video tokens ({args.mode}) ==")
        try:
            results["three_questions"] = three_questions(qa, args.ask_size, args)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            results["skipped"].append({"three_questions": args.ask_size, "why": f"{type(e).__name__}: {str(e)[:300]}"})
    save()
    report(results)
    differ = any(not r["same_answers"] for r in results["sizes"].values())
    return 1 if results["skipped"] or differ else 0


def report(results: dict[str, Any]) -> None:
    print("\n| video tokens | context | step | decode ms/step (median) | ask ms/token | weights + KV GB | effective GB/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results["sizes"].values():
        for kind, s in r["steps"].items():
            print(f"| {r['video_tokens']} | {r['context_tokens']} | {kind} | {s['step_ms_median']:.2f} | "
                  f"{s['ask_ms_per_token']:.2f} | {r['weight_gb']:.2f} + {r['kv_gb']:.2f} | {s['effective_gbs']:.0f} |")
        if not r["same_answers"]:
            print(f"| {r['video_tokens']} | the step kinds gave different answers |")
    report_questions(results.get("three_questions"))
    for s in results["skipped"]:
        print(f"skipped: {s}")


def report_questions(three: dict[str, Any] | None) -> None:
    if three:
        print(f"\nthree questions at {three['video_tokens']} video tokens ({three['mode']}): video prefill "
              f"{three['video_prefill_s']:.2f} s; cache {three['cache_gb']:.2f} GB; peak {three['peak_questions_gb']:.2f} GB")
        for q in three["questions"]:
            print(f"  first token {q['first_token_s'] * 1e3:9.1f} ms (own prefill {q['question_prefill_s'] * 1e3:.1f} ms), "
                  f"decode {q['decode_ms_per_token']:.2f} ms/token  {q['question']}")


if __name__ == "__main__":
    sys.exit(main())
