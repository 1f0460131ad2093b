"""`adaspark batch` throughput (issue 15) and the two-GPU runs (issue 18), through the batch runner's own code.

The model: a Qwen2.5-VL-7B-shaped checkpoint with random weights (bench_prefill's 28-layer language
model, hidden 3584, and by default the real 7B vision tower's shapes: 32 blocks of width 1280), bf16,
written once to --workdir with the bundled model's processor and tokenizer, then loaded the way `batch`
loads it (`qa.batch.Replica` -> `load_video_qa` -> `from_pretrained`, `--device-map` included).

The videos: the GPU machine has neither PyAV nor decord, so each job's frames are synthesised in
memory. `Replica.open` is replaced (here, and in spawned worker processes, which re-import this file)
by a `VideoStream` whose worker threads produce 448x448 RGB frames (a fixed random block XOR a
per-video byte: every video differs) instead of decoding a file; everything after that is the real
path: the stream's chunk threads, `prepare_video_stream` (patches on the GPU, the vision tower),
the sparse prefill, the answer, `answer_videos`' prefetch thread, `run_workers`' queue. Decoding
is NOT measured: --decode-ms-per-frame charges a simulated decode in the chunk threads (sleeping, as
PyAV releases the GIL), 0 by default; the real PyAV decode runs in those same threads. Random weights
never pick the stop tokens reliably, so each replica's `stop_ids` is emptied: every answer is exactly
--tokens tokens.

Parts (--part, default batch):
  batch       one replica on one device: single-video time (`Replica.run`, no prefetch: open + prepare +
              prefill + answer, i.e. `ask`'s time to first token + answer, median of --singles after a
              warm-up video) against `answer_videos` over --videos videos; throughput (videos/min) and
              the ratio batch / (1 / single) (issue 15 target >= 0.9); also with the load and warm-up counted.
  gpus        (two GPUs) `--gpus 1` (run_local) against `--gpus 2` (run_workers on cuda:0, cuda:1) on the
              same videos: throughput ratio (target >= 1.8), identical answers, each replica's videos and
              busy seconds; nvidia-smi dmon utilisation where nvidia-smi exists.
  device-map  (two GPUs) the checkpoint loaded with --device-map (default auto) against one device, at
              --dm-tokens video tokens (32K): p = 1 on the split model against the single-device dense
              logits, the sparse answer on both, and the sparse-over-dense prefill speed-up on each
              (target: the split one within 10 % of the single-device one).
  all         the three in turn.

Usage (GPU machine, repository root; torch 2.11, transformers 5.24; accelerate for device-map, which the
image has; writes ~16 GB to --workdir):
    PYTHONPATH=src python3 benchmarks/bench_batch.py --out $OUT                       # one H200: issue 15
    PYTHONPATH=src python3 benchmarks/bench_batch.py --part gpus --workdir /tmp/ab --out $OUT        # 2 GPUs: 18.1
    PYTHONPATH=src python3 benchmarks/bench_batch.py --part device-map --workdir /tmp/ab --out $OUT  # 2 GPUs: 18.2
(--workdir keeps the checkpoint for the next call on the same machine.)
CPU smoke run (tiny shapes, all three parts, CPU "replicas" and a CPU/disk device map; under a minute):
    PYTHONPATH=src python3 benchmarks/bench_batch.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # spawned workers import this file by path

from _batch_jobs import QUESTION, busy_seconds, comparable, first_token, make_jobs, per_replica, synthetic_open
from _batch_model import release, smoke_cap, write_checkpoint
from _common import environment as common_environment  # this folder is on sys.path; it puts src/ there too
from _common import log_stamped, out_file, write_json
from _gpu_monitor import start_dmon, stop_dmon

from adaspark_cli.attention.kernels import KERNELS
from adaspark_cli.jobs import VideoJob, VideoOutcome
from adaspark_cli.placement import STRATEGIES
from adaspark_cli.qa import batch as qa_batch

log = log_stamped


# ------------------------------------------------------------------------- the replicas' patches


_real_answer = qa_batch.Replica.answer


def tagged_answer(replica: Any, job: VideoJob, source: Any) -> list[dict[str, Any]]:
    """The replica's own answer, every answer exactly --tokens long (random weights: no stop tokens), each
    tagged with the replica's device (per-replica timings)."""
    replica.loaded.qa.stop_ids = set()
    answers = _real_answer(replica, job, source)
    for answer in answers:
        answer["replica"] = f"{replica.loaded.device} (pid {os.getpid()})"
    return answers


# module level: spawned workers re-import this file, so their replicas open synthetic videos as well
qa_batch.Replica.open = synthetic_open  # type: ignore[method-assign]
qa_batch.Replica.answer = tagged_answer  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------- helpers


def settings_for(args: argparse.Namespace, ckpt: Path, device: str) -> qa_batch.ModelSettings:
    return qa_batch.ModelSettings(model=str(ckpt), device=device, max_new_tokens=args.tokens, kernel=args.kernel)


# ------------------------------------------------------------------------------------ parts


def part_batch(args: argparse.Namespace, ckpt: Path, device: str) -> dict[str, Any]:
    """issue 15: single-video time against the batch loop, one replica."""
    start = time.perf_counter()
    replica = qa_batch.Replica(settings_for(args, ckpt, device))
    load_s = time.perf_counter() - start
    log(f"  model loaded in {load_s:.1f} s on {replica.loaded.device}")
    warm = replica.run(make_jobs(1, args.video_tokens, args.side, args.decode_us, prefix="warm", first_seed=900)[0])
    if warm.error:
        raise RuntimeError(f"the warm-up video failed: {warm.error}")
    log(f"  warm-up video (first calls, compiles): {warm.seconds:.1f} s; {warm.answers[0]['video_tokens']} video tokens")
    jobs = make_jobs(args.videos, args.video_tokens, args.side, args.decode_us)
    singles = [replica.run(job) for job in jobs[: args.singles]]
    for o in singles:
        log(f"  single {o.job.id}: {o.seconds:.2f} s (first token {first_token(o):.2f} s)")
    single_s = statistics.median(o.seconds for o in singles)
    start = time.perf_counter()
    arrivals: list[float] = []
    outcomes = []
    for o in qa_batch.answer_videos(replica, jobs):
        outcomes.append(o)
        arrivals.append(time.perf_counter() - start)
    batch_s = time.perf_counter() - start
    failed = [o.job.id for o in outcomes if o.error]
    same = [comparable(a) == comparable(b) for a, b in zip(singles, outcomes)]
    per_minute = 60 * len(jobs) / batch_s
    with_load = 60 * len(jobs) / (load_s + warm.seconds + batch_s)
    a = outcomes[0].answers[0] if outcomes and outcomes[0].answers else {}
    row = {"device": str(replica.loaded.device), "videos": len(jobs), "video_tokens": a.get("video_tokens"),
           "answer_tokens": args.tokens, "load_s": load_s, "warmup_video_s": warm.seconds,
           "single_s": single_s, "single_s_all": [o.seconds for o in singles],
           "single_first_token_s": statistics.median(first_token(o) for o in singles),
           "single_videos_per_minute": 60 / single_s, "single_timing": singles[0].answers[0]["timing"], "batch_s": batch_s,
           "batch_videos_per_minute": per_minute,
           "ratio": per_minute * single_s / 60, "batch_videos_per_minute_with_load_and_warmup": with_load,
           "ratio_with_load_and_warmup": with_load * single_s / 60, "batch_video_busy_s": [busy_seconds(o) for o in outcomes],
           "batch_first_token_s_median": statistics.median(first_token(o) for o in outcomes if o.answers) if
           not failed else None, "arrivals_s": arrivals, "failed": failed,
           "singles_equal_batch_answers": all(same), "flops_reduction": a.get("flops", {}).get("reduction"),
           "decode_step": a.get("decode", {}).get("cuda_graph"), "decode_charged_us_per_frame": args.decode_us}
    log(f"  single video {single_s:.2f} s -> {60 / single_s:.1f} videos/min; batch of {len(jobs)}: {batch_s:.1f} s -> "
        f"{per_minute:.1f} videos/min; ratio {row['ratio']:.3f} (target >= 0.9); with the load and warm-up "
        f"{with_load:.1f} videos/min, ratio {row['ratio_with_load_and_warmup']:.3f}")
    release(replica)
    return row


def part_gpus(args: argparse.Namespace, ckpt: Path, devices: list[str]) -> dict[str, Any]:
    """issue 18.1: one replica in this process against one replica per device (worker processes)."""
    jobs = make_jobs(args.videos, args.video_tokens, args.side, args.decode_us)
    n = len(devices)
    # warm-ups first: run_workers hands each worker PREFETCH + 1 jobs at the start, so each gets its own
    warm_count = n * (qa_batch.PREFETCH + 1)
    warm = make_jobs(warm_count, args.video_tokens, args.side, args.decode_us, prefix="warm", first_seed=900)
    runs: dict[str, Any] = {}
    answers: dict[str, dict[str, Any]] = {}
    dmon = start_dmon(None if args.smoke else out_file(args.out, "bench_batch_dmon.txt"))
    for label, run, warm_jobs in (("gpus_1", lambda s: qa_batch.run_local(s, warm[:1] + jobs), warm[:1]),
                                  (f"gpus_{n}", lambda s: qa_batch.run_workers(s, warm + jobs, devices), warm)):
        settings = settings_for(args, ckpt, devices[0])
        start = time.perf_counter()
        warm_left = {w.id for w in warm_jobs}
        after_warm = start
        real: list[tuple[VideoOutcome, float]] = []  # each with its arrival time
        for o in run(settings):
            if o.job.id in warm_left:
                if o.error:
                    raise RuntimeError(f"{label}: a warm-up video failed: {o.error}")
                warm_left.discard(o.job.id)
                after_warm = time.perf_counter()
            else:
                real.append((o, time.perf_counter()))
        end = time.perf_counter()
        steady = [o for o, at in real if at > after_warm]  # the videos answered once every replica was warm
        videos = [o for o, _ in real]
        runs[label] = {"replicas": 1 if label == "gpus_1" else n, "total_s_with_load": end - start,
                       "steady_s": end - after_warm, "steady_videos": len(steady),
                       "videos_per_minute": 60 * len(steady) / (end - after_warm),
                       "videos_per_minute_with_load": 60 * len(videos) / (end - start),
                       "per_replica": per_replica(videos), "failed": [o.job.id for o in videos if o.error]}
        answers[label] = {o.job.id: comparable(o) for o in videos}
        log(f"  {label}: {len(videos)} videos in {end - start:.1f} s with the load(s); {len(steady)} in "
            f"{end - after_warm:.1f} s after the warm-ups -> {runs[label]['videos_per_minute']:.1f} videos/min; "
            f"per replica {runs[label]['per_replica']}")
        release()
    one, many = runs["gpus_1"], runs[f"gpus_{n}"]
    row = {"devices": devices, "runs": runs, "ratio": many["videos_per_minute"] / one["videos_per_minute"],
           "ratio_with_load": many["videos_per_minute_with_load"] / one["videos_per_minute_with_load"],
           "identical_answers": answers["gpus_1"] == answers[f"gpus_{n}"], "dmon": stop_dmon(dmon)}
    log(f"  --gpus {n} / --gpus 1 throughput: {row['ratio']:.2f}x after the warm-ups (target >= 1.8), "
        f"{row['ratio_with_load']:.2f}x with the loads; identical answers: {row['identical_answers']}")
    return row


def part_device_map(args: argparse.Namespace, ckpt: Path, smoke: bool) -> dict[str, Any]:
    """issue 18.2: --device-map against one device at --dm-tokens: p = 1, answers, sparse-over-dense."""
    from adaspark_cli.placement import DeviceMapSpec
    from adaspark_cli.qa import load_video_qa

    spec = DeviceMapSpec(args.strategy, smoke_cap(ckpt) if smoke else ())
    single = load_video_qa(str(ckpt), device="cpu" if smoke else "cuda:0", kernel=args.kernel)
    split = load_video_qa(str(ckpt), device_map=spec, kernel=args.kernel)
    placement = split.placement.describe(split.qa.dims.layers)
    log(f"  --device-map {args.strategy}: {placement}")
    job = make_jobs(1, args.dm_tokens, args.side, 0, prefix="dm", first_seed=500)[0]
    prompt = single.qa.prepare_video(synthetic_open(None, job), max_pixels=job.max_pixels)
    log(f"  prompt: {prompt.video_tokens} video tokens")
    row: dict[str, Any] = {"strategy": args.strategy, "placement": placement, "device_map": {k: str(v) for k, v in
                           split.placement.device_map.items()}, "video_tokens": prompt.video_tokens}
    for qa in (single.qa, split.qa):
        qa.stop_ids = set()
    with single.qa.state.override(enabled=False):
        dense_single = single.qa.prefill_logits(prompt, QUESTION)
    with split.qa.state.override(config=split.config.replace(attn_top_p=1.0, ffn_top_p=1.0, layer_top_p=None)):
        p1_split = split.qa.prefill_logits(prompt, QUESTION)
    dense_single, p1_split = dense_single.float().cpu(), p1_split.float().cpu()
    row["p1_split_vs_dense_single_max_abs"] = float((p1_split - dense_single).abs().max())
    row["p1_split_vs_dense_single_top1_agree"] = float((p1_split.argmax(-1) == dense_single.argmax(-1)).float().mean())
    log(f"  p = 1 on the split model against the single-device dense logits: max |diff| "
        f"{row['p1_split_vs_dense_single_max_abs']:.3g}, top-1 agreement {row['p1_split_vs_dense_single_top1_agree']:.4f}")
    texts = {}
    for name, loaded in (("single", single), ("split", split)):
        prefix = loaded.qa.prefill_video(prompt)
        stream = loaded.qa.answer(prefix, QUESTION, max_new_tokens=min(args.tokens, 16))
        for _ in stream:
            pass
        texts[name] = stream.result.to_json()
        del prefix
    row["sparse_answers_equal"] = texts["single"]["answer"] == texts["split"]["answer"]
    row["decode_step"] = {k: v["decode"]["cuda_graph"] for k, v in texts.items()}
    for name, loaded in (("single", single), ("split", split)):
        row[name] = prefill_speedup(loaded.qa, prompt, args.repeats)
        log(f"  {name}: dense {row[name]['dense_s']:.3f} s, adaspark {row[name]['sparse_s']:.3f} s -> "
            f"{row[name]['speedup']:.2f}x")
    row["speedup_split_over_single"] = row["split"]["speedup"] / row["single"]["speedup"]
    log(f"  sparse answers equal: {row['sparse_answers_equal']}; split speed-up / single speed-up "
        f"{row['speedup_split_over_single']:.3f} (target within 10 %)")
    release(single, split)
    return row


def prefill_speedup(qa: Any, prompt: Any, repeats: int) -> dict[str, float]:
    out = {}
    for mode, enabled in (("dense", False), ("sparse", True)):
        with qa.state.override(enabled=enabled):
            qa.prefill_video(prompt)  # warm-up
            times = []
            for _ in range(repeats):
                prefix = qa.prefill_video(prompt)
                times.append(prefix.timing.prefill_s)
                del prefix
        out[f"{mode}_s"] = statistics.median(times)
    out["speedup"] = out["dense_s"] / out["sparse_s"]
    return out


# ------------------------------------------------------------------------------------- main


def environment() -> dict[str, Any]:
    env = common_environment(torch.cuda.is_available(), packages=("accelerate", "triton", "flash-attn-4"))
    env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("batch", "gpus", "device-map", "all"), default="batch")
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--video-tokens", type=int, default=16384, help="video tokens per video (256 per frame pair)")
    ap.add_argument("--tokens", type=int, default=32, help="answer tokens per video (one question each)")
    ap.add_argument("--singles", type=int, default=3, help="videos run alone for the single-video time")
    ap.add_argument("--decode-ms-per-frame", type=float, default=0.0, help="simulated decode charged per frame")
    ap.add_argument("--side", type=int, default=448, help="frame side in pixels (multiple of 28)")
    ap.add_argument("--vision", choices=("7b", "tiny"), default="7b", help="the vision tower's shapes")
    ap.add_argument("--kernel", choices=KERNELS, default="auto")
    ap.add_argument("--dm-tokens", type=int, default=32768, help="video tokens of the device-map part")
    ap.add_argument("--strategy", choices=STRATEGIES, default="auto", help="--device-map strategy of the device-map part")
    ap.add_argument("--repeats", type=int, default=3, help="timed prefills per mode in the device-map part")
    ap.add_argument("--gpus", type=int, default=2, help="replicas of the gpus part")
    ap.add_argument("--workdir", default=None, help="where the random checkpoint is written and kept, and reused by a "
                    "later run with the same --workdir and --vision (default: a temp dir, removed at the end)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, every part: checks the code path")
    args = ap.parse_args()
    if args.smoke:
        args.part, args.videos, args.video_tokens, args.tokens, args.singles = "all", 4, 64, 4, 2
        args.dm_tokens, args.side, args.repeats = 64, 112, 1
    args.decode_us = int(round(args.decode_ms_per_frame * 1000))
    results: dict[str, Any] = {"env": environment(), "args": vars(args), "parts": {}, "skipped": []}
    log(f"environment: {json.dumps(results['env'])}")

    def save() -> None:
        write_json(results, out_file(args.out, "bench_batch.json"))

    cuda = torch.cuda.is_available() and not args.smoke
    visible = torch.cuda.device_count() if cuda else 0
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="adaspark_bench_"))
    ckpt = workdir / (f"random-7b-vision-{args.vision}" if not args.smoke else "random-smoke")
    try:
        if args.workdir and (ckpt / "config.json").is_file() and any(ckpt.glob("*.safetensors")):
            results["checkpoint"] = {"folder": str(ckpt), "reused": True}  # an earlier run's, same --workdir
            log(f"checkpoint: reusing {ckpt}")
        else:
            results["checkpoint"] = write_checkpoint(ckpt, args.smoke, args.vision)
        parts = ["batch", "gpus", "device-map"] if args.part == "all" else [args.part]
        for part in parts:
            log(f"== {part} ==")
            try:
                if part == "batch":
                    results["parts"][part] = part_batch(args, ckpt, "cuda:0" if cuda else "cpu")
                elif part == "gpus":
                    if cuda and visible < args.gpus:
                        raise RuntimeError(f"needs {args.gpus} GPUs, {visible} visible")
                    devices = [f"cuda:{i}" for i in range(args.gpus)] if cuda else ["cpu"] * args.gpus
                    results["parts"][part] = part_gpus(args, ckpt, devices)
                else:
                    if cuda and visible < 2:
                        raise RuntimeError(f"needs 2 GPUs, {visible} visible")
                    results["parts"][part] = part_device_map(args, ckpt, args.smoke)
            except Exception as exc:  # noqa: BLE001 - one part failing must not lose the others
                traceback.print_exc()
                results["skipped"].append({"part": part, "why": f"{type(exc).__name__}: {str(exc)[:300]}"})
            save()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    save()
    report(results)
    return 1 if results["skipped"] else 0


def report(results: dict[str, Any]) -> None:
    env = results["env"]
    print(f"\n{env['command']}\n{env['date_utc']}, {', '.join(env['gpus']) or 'CPU'}, torch {env['torch']}, "
          f"transformers {env['transformers']}, accelerate {env['accelerate']}, commit {env['commit']}")
    b = results["parts"].get("batch")
    if b:
        print(f"batch ({b['device']}, {b['videos']} videos x {b['video_tokens']} video tokens, {b['answer_tokens']} answer "
              f"tokens): single video {b['single_s']:.2f} s (first token {b['single_first_token_s']:.2f} s) = "
              f"{b['single_videos_per_minute']:.1f} videos/min; batch {b['batch_videos_per_minute']:.1f} videos/min; "
              f"ratio {b['ratio']:.3f} (target >= 0.9); with the model load ({b['load_s']:.1f} s) and warm-up "
              f"({b['warmup_video_s']:.1f} s): {b['batch_videos_per_minute_with_load_and_warmup']:.1f} videos/min, ratio "
              f"{b['ratio_with_load_and_warmup']:.3f}; singles = batch answers: {b['singles_equal_batch_answers']}")
    g = results["parts"].get("gpus")
    if g:
        for label, r in g["runs"].items():
            print(f"{label}: {r['videos_per_minute']:.1f} videos/min after the warm-ups, "
                  f"{r['videos_per_minute_with_load']:.1f} with the load(s); per replica {r['per_replica']}")
        print(f"--gpus {len(g['devices'])} / --gpus 1: {g['ratio']:.2f}x (target >= 1.8); identical answers "
              f"{g['identical_answers']}; dmon {g['dmon']}")
    d = results["parts"].get("device-map")
    if d:
        print(f"--device-map {d['strategy']} at {d['video_tokens']} video tokens: {d['placement']}; p = 1 vs single dense: "
              f"max |diff| {d['p1_split_vs_dense_single_max_abs']:.3g}, top-1 {d['p1_split_vs_dense_single_top1_agree']:.4f}; "
              f"sparse answers equal {d['sparse_answers_equal']}; speed-up single {d['single']['speedup']:.2f}x, split "
              f"{d['split']['speedup']:.2f}x (ratio {d['speedup_split_over_single']:.3f}, target 0.9-1.1)")
    for s in results["skipped"]:
        print(f"skipped: {s}")


if __name__ == "__main__":
    sys.exit(main())
