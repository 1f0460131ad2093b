"""`adaspark batch`: answer questions about many videos with one model load; resumable JSONL output."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from . import options as opt
from .defaults import MIN_PIXELS
from .errors import UsageError, handle_errors, interrupted, loading, print_error, usage
from .render import BUNDLED_MODEL_NOTE, BatchProgress, err_console, note, placement_note, write_json

EXIT_SOME_FAILED = 1


@handle_errors
def batch(
    input: str = typer.Argument(..., metavar="INPUT", help="A JSONL manifest (one object per video: \"video\" (path "
                                "relative to the manifest's folder), \"questions\" (a list), optional \"id\", \"fps\", "
                                "\"max_frames\", \"max_pixels\"), or a folder of videos or a quoted glob such as "
                                "'clips/**/*.mp4' with -q.", show_default=False),
    questions: list[str] = typer.Option(None, "--question", "-q", metavar="QUESTION",
                                        help="A question for every video of a folder or glob INPUT (repeat for more).",
                                        show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="The answers JSONL: one object per video, written as each "
                            "finishes. Rerunning the same command skips the videos already there. '-' writes to "
                            "stdout (no resume).", show_default=False),
    force: bool = typer.Option(False, "--force", help="Replace --out instead of resuming it."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="On resume, redo the videos whose record in "
                                      "--out carries an error (their old records are removed)."),
    model: str = opt.MODEL,
    dense: bool = opt.DENSE,
    cube: str = opt.CUBE,
    top_p: float = opt.TOP_P,
    attn_top_p: float = opt.ATTN_TOP_P,
    ffn_top_p: float = opt.FFN_TOP_P,
    layers: str = opt.LAYERS,
    fps: float = opt.FPS,
    max_frames: int = opt.MAX_FRAMES,
    max_pixels: int = opt.MAX_PIXELS,
    decoder: str = opt.ASK_DECODER,
    max_new_tokens: int = opt.MAX_NEW_TOKENS,
    device: str = opt.DEVICE,
    device_map: str = opt.DEVICE_MAP,
    max_memory: str = opt.MAX_MEMORY,
    kernel: str = opt.KERNEL,
    gpus: int = typer.Option(None, "--gpus", help="Model replicas, one per CUDA GPU, each in its own process, "
                             "videos handed out from one queue. Default: every visible GPU; on the CPU one.",
                             show_default=False),
    ray: str = typer.Option(None, "--ray", metavar="ADDRESS", help="Run the replicas as Ray actors (one per GPU; "
                            "a dead one is restarted and its video retried): --ray local starts a Ray cluster on "
                            "this machine, --ray auto joins the one running here, --ray ray://HOST:10001 a remote "
                            "one. Needs pip install 'adaspark-cli[ray]', and adaspark on every node.",
                            show_default=False),
    cpu_workers: int = typer.Option(None, "--cpu-workers", hidden=True, help="Test only: N replicas on the CPU "
                                    "(worker processes, or Ray actors with --ray) instead of one per GPU."),
    json_out: bool = typer.Option(False, "--json", help="End with the summary as one JSON object on stderr "
                                  "(instead of the text summary); stdout stays clean."),
    quiet: bool = typer.Option(False, "--quiet", help="No notes, progress or per-video errors on "
                               "stderr (the records keep them; the summary and fatal errors stay)."),
) -> None:
    """Answer questions about many videos: the model loads once and each video's answers are appended to
    --out as it finishes.

    Each line of --out is {"id", "video", "answers": [the ask --json object per question], "error": null
    or the one-line reason the video could not be read or answered}; a failed video does not stop the
    run. Rerunning the same command resumes: videos whose id is already in --out are skipped (a line
    cut short by a crash is dropped and its video redone). The next video is opened in a background
    thread while the current one is answered. With several replicas (--gpus, --ray) lines arrive in the
    order videos finish. The exit code is 1 when any video failed.

    Examples:

        adaspark batch videos.jsonl --out answers.jsonl

        adaspark batch clips/ -q "What happens?" -q "How many people?" --out answers.jsonl

        adaspark batch 'archive/**/*.mp4' -q "Summarize." --out answers.jsonl --gpus 4
    """
    jobs, out_path = _check_flags(input, questions or [], out, force, fps, max_frames, max_pixels, max_new_tokens,
                                  device, gpus, cpu_workers, retry_failed)
    overrides = opt.sparsity_overrides(cube, top_p, attn_top_p, ffn_top_p, layers)
    spread = _device_map(device_map, max_memory, device, gpus, ray, cpu_workers)

    with loading():
        import torch

        from ..api import ModelSettings
    visible = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    # None: one replica here (also the one a device map spreads), or Ray places the replicas
    devices = None if ray is not None or spread is not None else _devices(gpus, cpu_workers, visible)
    from ..api import AnswersFile

    answers = None if out_path is None else AnswersFile.open(out_path, force=force, retry_failed=retry_failed)
    done = answers.done if answers is not None else {}
    pending = [job for job in jobs if job.id not in done]
    skipped = len(jobs) - len(pending)
    if not quiet:
        _opening_notes(answers, force, skipped, len(jobs))
    settings = ModelSettings(model=model, device=device, overrides=overrides, dense=dense, kernel=kernel,
                             decoder=decoder, max_new_tokens=max_new_tokens, device_map=spread)
    summary = _Summary(total=len(jobs), skipped=skipped)
    try:
        if pending:
            try:
                _run(settings, pending, answers, summary, devices=devices, ray=ray, replicas=cpu_workers or gpus,
                     cpu_actors=cpu_workers is not None, quiet=quiet)
            except KeyboardInterrupt:
                if answers is None:
                    raise
                interrupted(f"interrupted; the {answers.written_this_run()} video(s) finished in this run are "
                            f"in {out}: rerun the same command to resume")
    finally:
        if answers is not None:
            answers.close()
    summary.report(json_out=json_out, out=out)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _check_flags(input: str, questions: list[str], out: str, force: bool, fps: float, max_frames: int,
                 max_pixels: int, max_new_tokens: int, device: str,
                 gpus: int | None, cpu_workers: int | None, retry_failed: bool) -> tuple[list[Any], Path | None]:
    """Every flag, and the jobs read from INPUT, before anything heavy loads (usage errors, exit 2)."""
    opt.check_max_new_tokens(max_new_tokens)
    opt.check_sampling(fps, max_frames)
    opt.check_max_pixels(max_pixels)
    opt.check_at_least("--gpus", gpus, 1)
    opt.check_at_least("--cpu-workers", cpu_workers, 1)
    if gpus is not None and cpu_workers is not None:
        raise UsageError("--cpu-workers (a test-only option) replaces --gpus; give one of them")
    if gpus is not None and gpus > 1 and device not in ("auto", "cuda"):
        raise UsageError(f"--gpus {gpus} places one replica on each of cuda:0 .. cuda:{gpus - 1}, but --device is "
                         f"{device}; drop --gpus or --device")
    out_path = None if out == "-" else Path(out)
    if out_path is None and (force or retry_failed):
        flag = "--force" if force else "--retry-failed"
        raise UsageError(f"{flag} works on the --out file, but --out is '-' (stdout, no resume); drop {flag}")
    if force and retry_failed:
        raise UsageError("--force redoes every video, --retry-failed only the failed ones; give one of them")
    questions = opt.check_questions(questions, "batch")
    from ..api import FrameSampling, find_videos, read_manifest  # no torch: usage errors stay light

    sampling = FrameSampling(fps=fps, max_frames=max_frames, max_pixels=max_pixels, min_pixels=MIN_PIXELS)
    source = Path(input)
    with usage():
        if source.is_file() and source.suffix.lower() not in opt.VIDEO_SUFFIXES:
            if questions:
                raise UsageError(f"-q questions are for a folder or glob INPUT; the manifest {input} lists each "
                                 "video's questions: drop -q or add them to the manifest")
            jobs = read_manifest(source, sampling, opt.check_question)
        else:
            opt.check_video_path(source, "INPUT")
            if not questions:
                raise UsageError(f"no question for the videos of {input}; add -q \"What happens?\" (repeatable), "
                                 "or give a JSONL manifest")
            jobs = find_videos(input, questions, sampling, opt.VIDEO_SUFFIXES)
    if out_path is not None:
        _check_out(out_path, source)
    return jobs, out_path


def _device_map(device_map: str | None, max_memory: str | None, device: str, gpus: int | None, ray: str | None,
                cpu_workers: int | None) -> Any:
    """--device-map spreads one replica over the GPUs: it excludes a replica per GPU (--gpus N, --ray)."""
    if device_map is not None:
        if gpus is not None and gpus > 1:
            raise UsageError(f"--device-map spreads one replica over the visible GPUs, --gpus {gpus} runs one replica "
                             "per GPU; give one of them (choose the GPUs with CUDA_VISIBLE_DEVICES)")
        if ray is not None:
            raise UsageError("--device-map spreads one replica over this machine's GPUs; --ray places one replica "
                             "per GPU on a cluster: give one of them")
        if cpu_workers is not None:
            raise UsageError("--cpu-workers (a test-only option) runs several replicas; it cannot go with --device-map")
    return opt.device_map_spec(device_map, max_memory, device)


def _check_out(out: Path, source: Path) -> None:
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name a file, e.g. --out {out / 'answers.jsonl'}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if source.is_file() and out.exists() and out.resolve() == source.resolve():
        raise UsageError(f"--out {out} is the INPUT manifest itself; choose another file, e.g. --out answers.jsonl")


def _opening_notes(answers: Any, force: bool, skipped: int, total: int) -> None:
    if answers is None:
        return
    if force and answers.existed:
        note(f"--force: {answers.path} is replaced (its old records go when the first new one is written)")
    if answers.dropped_torn:
        note(f"{answers.path}: its last line was cut short (a crash while writing); it is dropped and that video redone")
    if answers.retried:
        note(f"--retry-failed: {len(answers.retried)} failed video(s) in {answers.path} are redone")
    if skipped:
        failed = answers.failed_before()
        note(f"resuming {answers.path}: {skipped} of {total} videos already there are skipped (--force starts over)"
             + (f"; {failed} of them failed (--retry-failed redoes those)" if failed else ""))


def _run(settings: Any, pending: list[Any], answers: Any, summary: _Summary, *, devices: list[str] | None,
         ray: str | None, replicas: int | None, cpu_actors: bool, quiet: bool) -> None:
    """Load the replicas and answer `pending`, writing each record as it comes back."""
    with loading():
        from ..api import run_local, run_ray, run_workers
    with BatchProgress(total=summary.total, done=summary.skipped, enabled=not quiet) as bar:
        bar.stage("loading the model")

        def loaded(n: int) -> None:
            bar.stage(f"loading the model: {n} of {replicas or (len(devices) if devices else 1)} replicas ready")

        if ray is not None:
            outcomes = run_ray(settings, pending, address=ray, replicas=replicas,
                               cpu_workers=cpu_actors, on_loaded=loaded)
        elif devices:
            outcomes = run_workers(settings, pending, devices, on_loaded=loaded)
        else:
            outcomes = run_local(settings, pending, on_loaded=lambda replica: _local_notes(replica, pending, quiet))
        summary.start()
        for outcome in outcomes:
            if answers is None:
                write_json(outcome.record())
            else:
                answers.write(outcome.record())
            summary.add(outcome)
            bar.advance(outcome.job.video)
            if outcome.error is not None and not quiet:
                print_error(f"{outcome.job.video}: {outcome.error}")


def _devices(gpus: int | None, cpu_workers: int | None, visible: int) -> list[str] | None:
    """The worker processes' devices, or None for one replica in this process."""
    if cpu_workers is not None:
        return ["cpu"] * cpu_workers  # test only: several CPU replicas exercise the worker path
    if gpus is not None and gpus > visible:
        where = "none is visible" if visible == 0 else f"only {visible} {'is' if visible == 1 else 'are'} visible"
        fix = "drop --gpus (one replica on the CPU)" if visible == 0 else f"use --gpus {visible} or fewer"
        raise UsageError(f"--gpus {gpus} needs {gpus} CUDA GPUs but {where}; {fix}, or run on a cluster with --ray "
                         "ADDRESS")
    count = gpus or visible
    return [f"cuda:{i}" for i in range(count)] if count > 1 else None


def _local_notes(replica: Any, jobs: list[Any], quiet: bool) -> None:
    if quiet:
        return
    from ..api import is_bundled_demo

    if replica.loaded.placement is not None:
        note(placement_note(replica.loaded, replica.settings.device_map.strategy))
    if replica.loaded.device.type == "cpu":
        note("running on the CPU (no CUDA GPU visible); long videos will be slow")
    if replica.loaded.bundled and not all(is_bundled_demo(job.path) for job in jobs):
        note(BUNDLED_MODEL_NOTE)


class _Summary:
    """Counts and means over the videos answered in this run; the end-of-run report."""

    def __init__(self, total: int, skipped: int) -> None:
        self.total, self.skipped = total, skipped
        self.answered = self.failed = 0
        self.first_token: list[float] = []
        self.reductions: list[float] = []
        self._start = time.perf_counter()
        self._work_start: float | None = None

    def start(self) -> None:
        self._work_start = time.perf_counter()

    def add(self, outcome: Any) -> None:
        if outcome.error is not None:
            self.failed += 1
            return
        self.answered += 1
        if outcome.answers:
            self.first_token.append(outcome.answers[0]["timing"]["first_token_s"])  # the video's first question
        self.reductions += [a["flops"]["reduction"] for a in outcome.answers if a.get("flops")]

    def to_json(self, out: str) -> dict[str, Any]:
        seconds = time.perf_counter() - self._start
        done = self.answered + self.failed
        return {
            "out": out,
            "total": self.total,
            "answered": self.answered,
            "failed": self.failed,
            "skipped": self.skipped,
            "seconds": seconds,
            "videos_per_minute": 60 * done / seconds if done and seconds > 0 else None,
            "mean_first_token_s": _mean(self.first_token),
            "mean_flops_reduction": _mean(self.reductions),
        }

    def report(self, *, json_out: bool, out: str) -> None:
        data = self.to_json(out)
        if json_out:
            import json

            err_console.file.write(json.dumps(data) + "\n")
            err_console.file.flush()
            return
        parts = [f"{data['answered']} answered", f"{data['failed']} failed", f"{data['skipped']} skipped (already "
                 f"in {out})" if out != "-" else f"{data['skipped']} skipped", f"{data['seconds']:.1f} s"]
        if data["videos_per_minute"] is not None:
            parts.append(f"{data['videos_per_minute']:.1f} videos/min")
        if data["mean_first_token_s"] is not None:
            parts.append(f"mean first token {data['mean_first_token_s']:.2f} s")
        if data["mean_flops_reduction"] is not None:
            parts.append(f"mean prefill FLOPs saved {data['mean_flops_reduction']:.1%}")
        err_console.print(f"batch: {', '.join(parts)}", highlight=False, soft_wrap=True)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
