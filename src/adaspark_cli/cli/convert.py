"""`adaspark convert`: write an AdaSpark checkpoint (same weights, config.json with an "adaspark" block)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as opt
from .defaults import DEFAULT_GRID, DEFAULT_QUESTION
from .errors import UsageError, handle_errors, interrupted, loading, mark_complete, usage
from .render import ProgressBar, calibration_table, err_console, note, write_json, write_line


@handle_errors
def convert(
    src: str = typer.Argument(..., metavar="SRC", help="Dense Qwen2.5-VL or Qwen3-VL checkpoint: a local directory or a hub id "
                              "(HF cache; HF_HUB_OFFLINE honoured).", show_default=False),
    out: Path = typer.Argument(..., metavar="OUT", help="New checkpoint directory to write.", show_default=False),
    cube: str = opt.CUBE,
    top_p: float = opt.TOP_P,
    attn_top_p: float = opt.ATTN_TOP_P,
    ffn_top_p: float = opt.FFN_TOP_P,
    layers: str = opt.LAYERS,
    target_reduction: float = typer.Option(None, "--target-reduction", help="Choose attn/ffn top-p that cut prefill "
                                           "FLOPs by this fraction (0.57 = 57%) on the --calibrate videos while "
                                           "moving the logits least.", show_default=False),
    calibrate_videos: list[Path] = typer.Option(None, "--calibrate", help="Calibration video (repeat the flag for "
                                                "several); needs --target-reduction.", show_default=False),
    question: str = typer.Option(DEFAULT_QUESTION, "--question", help="Question whose logits calibration compares "
                                 f"(at most {opt.MAX_QUESTION_CHARS:,} characters)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Calibrate a top-p pair per layer (layers x grid^2 "
                                   "prefills per video) instead of one global pair (grid^2)."),
    grid: str = typer.Option(",".join(f"{g:g}" for g in DEFAULT_GRID), "--grid", help="Top-p values tried for both "
                             "attn and ffn during calibration (every pair)."),
    fps: float = opt.FPS,
    max_frames: int = opt.MAX_FRAMES,
    max_pixels: int = opt.MAX_PIXELS,
    decoder: str = opt.DECODER,
    device: str = opt.DEVICE,
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
    quiet: bool = opt.QUIET,
) -> None:
    """Convert the dense Qwen2.5-VL or Qwen3-VL checkpoint SRC into an AdaSpark checkpoint at OUT.

    The weights are hard-linked (or copied across filesystems), never modified; processor and tokenizer
    files are copied; config.json gains an "adaspark" block that ask and profile read. Options set the
    values directly, or --target-reduction with --calibrate chooses them (one global pair, or one per
    layer with --per-layer). The write is atomic: OUT appears complete or not at all, and SRC is never
    written. Exit code 0 means OUT is complete, also after a Ctrl-C that came too late to stop it (a
    note says so); 130 means OUT was not written.

    Examples:

        adaspark convert Qwen/Qwen2.5-VL-7B-Instruct ./qwen-adaspark --attn-top-p 0.9 --ffn-top-p 0.7

        adaspark convert ./Qwen2.5-VL-7B-Instruct ./qwen-adaspark --target-reduction 0.57 --calibrate a.mp4 --calibrate b.mp4

        adaspark convert ./Qwen2.5-VL-7B-Instruct ./qwen-adaspark --target-reduction 0.5 --calibrate a.mp4 --per-layer --grid 1,0.8,0.5

        adaspark ask clip.mp4 "What happens?" --model ./qwen-adaspark
    """
    videos = list(calibrate_videos or [])
    if (target_reduction is None) != (not videos):
        raise UsageError("--target-reduction and --calibrate go together: give a target and at least one video, "
                         "or neither and set the values with --attn-top-p/--ffn-top-p")
    if target_reduction is not None and (top_p, attn_top_p, ffn_top_p) != (None, None, None):
        raise UsageError("--target-reduction chooses the top-p values; drop --top-p/--attn-top-p/--ffn-top-p")
    if per_layer and target_reduction is None:
        raise UsageError("--per-layer is a calibration method; add --target-reduction and --calibrate VIDEO")
    for video in videos:
        opt.check_video_path(video, "--calibrate")
    question = opt.check_question(question, "--question")
    opt.check_sampling(fps, max_frames)
    opt.check_max_pixels(max_pixels)
    if target_reduction is not None and not 0.0 < target_reduction < 1.0:
        raise UsageError(f"--target-reduction must be between 0 and 1 (0.57 = 57% fewer FLOPs), got {target_reduction:g}")
    overrides = opt.sparsity_overrides(cube, top_p, attn_top_p, ffn_top_p, layers)

    with loading():  # torch: only once the flags are good
        from ..api import (
            calibrate,
            calibrate_per_layer,
            check_convert_paths,
            convert_checkpoint,
            decode_video,
            is_converted,
            load_video_qa,
            merged_config,
            parse_grid,
            read_config_json,
        )

    with usage():
        values = parse_grid(grid)
    path, out, _ = check_convert_paths(src, out, force=force)
    config, _ = merged_config(read_config_json(path), overrides)
    record = None
    if target_reduction is not None:
        with ProgressBar(enabled=not quiet) as bar:
            decoded = []
            for video in videos:
                bar.stage(f"decoding {video.name}")
                decoded.append(decode_video(video, fps=fps, max_frames=max_frames, backend=decoder))
            bar.stage("loading the model")
            with loading():  # transformers imports the model's modules now; nothing is written yet
                loaded = load_video_qa(str(path), device=device, overrides=overrides)  # same block + overrides
            search = calibrate_per_layer if per_layer else calibrate
            result = search(loaded.qa, decoded, target_reduction=target_reduction, question=question, grid=values,
                            max_pixels=max_pixels, progress=bar.update)
        config, record = result.config, result.record()
        if not quiet:
            err_console.print(calibration_table(record))
    existed = out.exists()
    try:
        with ProgressBar(enabled=not quiet) as bar:
            bar.stage(f"writing {out}")
            converted = convert_checkpoint(path, out, config, force=force, calibration=record)
        mark_complete(f"interrupted, but {out} is complete")  # from here on a Ctrl-C exits 0
        if json_out:
            write_json(converted.to_json())
        else:
            write_line(str(converted.out))
        if not quiet:
            top_p_text = (f"attn top-p {config.attn_top_p}, ffn top-p {config.ffn_top_p}" if config.layer_top_p is None
                          else "per-layer top-p")
            note(f"wrote {converted.out}: {converted.linked} weight file(s) linked, {converted.copied} copied; "
                 f"adaspark cube {'x'.join(map(str, config.cube))}, {top_p_text}, "
                 f"layers {'all' if config.sparse_layers is None else list(config.sparse_layers)}")
    except KeyboardInterrupt:
        # the exit code must say whether OUT is complete, and the interrupt may have landed after the rename
        if is_converted(path, out, config, record):
            interrupted(f"interrupted, but {out} is complete", code=0)
        interrupted(f"interrupted; {out} was not written" + (" (the existing one is unchanged)" if existed else ""))
