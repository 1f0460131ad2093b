"""`adaspark ask`: answer questions about a video, streaming, with per-layer sparsity statistics."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from . import options as opt
from .errors import UsageError, handle_errors, loading, print_error
from .render import (
    BUNDLED_MODEL_NOTE,
    ProgressBar,
    err_console,
    layer_table,
    note,
    placement_note,
    write_answer_piece,
    write_json,
)


@handle_errors
def ask(
    video: Path = typer.Argument(..., metavar="VIDEO", help="Video file (mp4, webm, avi, mkv, ...).", show_default=False),
    questions: list[str] = typer.Argument(None, metavar="QUESTION", help="One or more questions about VIDEO "
                                          f"(at most {opt.MAX_QUESTION_CHARS:,} characters each); each is answered "
                                          "in turn.", show_default=False),
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
    temperature: float = opt.TEMPERATURE,
    seed: int = opt.SEED,
    device: str = opt.DEVICE,
    device_map: str = opt.DEVICE_MAP,
    max_memory: str = opt.MAX_MEMORY,
    kernel: str = opt.KERNEL,
    interactive: bool = typer.Option(False, "--interactive", "-i", help="After the given questions, read more "
                                     "from the terminal (an empty line or Ctrl-D ends)."),
    json_out: bool = opt.JSON,
    quiet: bool = opt.QUIET,
) -> None:
    """Answer QUESTIONS about VIDEO with AdaSpark sparsity in the language model.

    The video is decoded and prefilled once; every question reuses its KV cache. Answers are greedy
    unless --temperature is given (--seed makes sampled answers repeatable). By default decoding
    runs in background threads while the vision tower works on the frames already decoded (--decoder).
    Answers stream to stdout; a per-layer table of kept cubes and tokens and the FLOPs saved goes to
    stderr.

    Examples:

        adaspark ask clip.mp4 "What happens after the door opens?"

        adaspark ask clip.mp4 "Who enters?" "What color is the car?" --model Qwen/Qwen2.5-VL-7B-Instruct

        adaspark ask clip.mp4 "Summarize." --dense --json

        adaspark ask clip.mp4 "Describe the scene." --temperature 0.7 --seed 1
    """
    opt.check_video_path(video)
    questions = opt.check_questions(list(questions or []), "ask")
    if not questions and not interactive:
        raise UsageError("no question given; add one after the video, e.g. adaspark ask clip.mp4 \"What happens?\", "
                         "or use --interactive")
    opt.check_max_new_tokens(max_new_tokens)
    opt.check_answer_sampling(temperature, seed)
    opt.check_sampling(fps, max_frames)
    opt.check_max_pixels(max_pixels)
    overrides = opt.sparsity_overrides(cube, top_p, attn_top_p, ffn_top_p, layers)
    spread = opt.device_map_spec(device_map, max_memory, device)

    with loading():  # torch and transformers: only once the flags are good
        from ..api import Sampling, VideoStream, is_bundled_demo, load_video_qa, open_video

        source = open_video(video, fps=fps, max_frames=max_frames, decoder=decoder)  # decoded in prepare_video
        loaded = load_video_qa(model, device=device, overrides=overrides, dense=dense, kernel=kernel,
                               device_map=spread)
    if not quiet:
        if loaded.placement is not None:
            note(placement_note(loaded, device_map))
        if loaded.device.type == "cpu":
            note("running on the CPU (no CUDA GPU visible); long videos will be slow")
        if loaded.bundled and not is_bundled_demo(video):
            note(BUNDLED_MODEL_NOTE)
    qa = loaded.qa
    sampling = Sampling(temperature=temperature, seed=seed)
    with ProgressBar(enabled=not quiet) as bar:  # on a terminal only: decoding and the vision tower take a while
        bar.stage(f"{source.path.name}: decoding and the vision tower")
        prompt = qa.prepare_video(source, max_pixels=max_pixels)
    if not quiet:
        for line in source.notes:  # the video reader's remarks: rotation applied, damaged frames skipped, ...
            note(line)
        cfg = loaded.config
        mode = "dense" if dense else (
            f"adaspark cube {'x'.join(map(str, cfg.cube))}, "
            + ("per-layer top-p" if cfg.layer_top_p else f"attn top-p {cfg.attn_top_p}, ffn top-p {cfg.ffn_top_p}")
            + f", {qa.state.kernel_for(loaded.device)} kernel"
        ) + ("" if temperature == 0 else f"; sampled at temperature {temperature:g}" + ("" if seed is None else f", seed {seed}"))
        reader = f"{source.backend}, pipelined" if isinstance(source, VideoStream) else source.backend
        note(f"{source.path.name}: {prompt.frames} frames ({reader}, {source.duration:.1f} s video), "
             f"{prompt.video_tokens} video tokens in {prompt.layout.num_cubes} cubes; {mode}; prefilling...")
    with ProgressBar(enabled=not quiet) as bar:
        bar.stage("prefilling the video")
        prefix = qa.prefill_video(prompt, progress=lambda done, total: bar.update("prefill: layer", done, total),
                                  tail_tokens=qa.tail_tokens_for(questions, max_new_tokens))
    for question in _questions(questions, interactive):
        stream = qa.answer(prefix, question, max_new_tokens=max_new_tokens, sampling=sampling)
        if json_out:
            for _ in stream:
                pass
        else:
            if (len(questions) > 1 or interactive) and not quiet:
                err_console.print(f"[bold]Q:[/] {question}", markup=True, highlight=False)
            for piece in stream:
                write_answer_piece(piece)
            write_answer_piece("\n")
        result = stream.result.to_json()
        if json_out:
            write_json(result)
        if not quiet:
            err_console.print(layer_table(result))


def _questions(given: list[str], interactive: bool) -> Iterator[str]:
    """The given questions, then (interactive) lines from stdin until an empty line or EOF.

    A line that is not a question (too long, a video file name) is refused in one line and the next is read."""
    yield from given
    if not interactive:
        return
    while True:
        if sys.stdin.isatty():
            err_console.print("question> ", end="")  # the prompt goes to stderr: stdout carries answers
        line = sys.stdin.readline()
        if not line.strip():
            return
        try:
            yield opt.check_questions([line], "ask")[0]
        except UsageError as exc:
            print_error(str(exc))
