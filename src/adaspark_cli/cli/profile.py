"""`adaspark profile`: dense against AdaSpark on one prefill, per layer and in total, optionally plotted."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as opt
from .defaults import DEFAULT_QUESTION
from .errors import handle_errors, loading
from .render import (
    BUNDLED_MODEL_NOTE,
    ProgressBar,
    note,
    profile_summary,
    profile_tables,
    write_report,
)


@handle_errors
def profile(
    video: Path = typer.Argument(..., metavar="VIDEO", help="Video file (mp4, webm, avi, mkv, ...).", show_default=False),
    question: str = typer.Argument(DEFAULT_QUESTION, metavar="QUESTION", help="Question after the video; its logits are "
                                  f"compared (at most {opt.MAX_QUESTION_CHARS:,} characters)."),
    model: str = opt.MODEL,
    cube: str = opt.CUBE,
    top_p: float = opt.TOP_P,
    attn_top_p: float = opt.ATTN_TOP_P,
    ffn_top_p: float = opt.FFN_TOP_P,
    layers: str = opt.LAYERS,
    fps: float = opt.FPS,
    max_frames: int = opt.MAX_FRAMES,
    max_pixels: int = opt.MAX_PIXELS,
    decoder: str = opt.DECODER,
    device: str = opt.DEVICE,
    kernel: str = opt.KERNEL,
    warmup: int = typer.Option(None, "--warmup", help="Untimed runs per mode before timing (the first collects "
                               "the statistics). Default: 3 on CUDA, 1 on the CPU.", show_default=False),
    repeats: int = typer.Option(None, "--repeats", help="Timed runs per mode; the median is reported. Default: 5 "
                                "on CUDA, 1 on the CPU.", show_default=False),
    heatmap_layer: int = typer.Option(None, "--heatmap-layer", help="Layer whose cube selections the heatmap shows. "
                                      "Default: the middle sparse layer.", show_default=False),
    plot: Path = typer.Option(None, "--plot", help="Write density/FFN-keep bars and the cube-selection heatmap to "
                              "this .png (.svg, .pdf); needs pip install 'adaspark-cli[plot]'.", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the tables "
                                  "(they go to stderr)."),
    quiet: bool = opt.REPORT_QUIET,
) -> None:
    """Profile one prefill of VIDEO + QUESTION, dense against AdaSpark, on the same model.

    Per layer: cubes available and attended per video query, attention density, FFN rows kept, FLOPs
    (attention, FFN, rest) dense and sparse. Totals: FLOPs reduction, measured prefill time (warm-up and
    repeats; on the CPU these are CPU times), peak memory, and how far the answer's logits moved (KL and
    top-1 agreement against dense).

    Examples:

        adaspark profile clip.mp4

        adaspark profile clip.mp4 "What happens after the door opens?" --top-p 0.8 --plot profile.png

        adaspark profile clip.mp4 --model ./qwen2.5-vl-7b-adaspark --repeats 10 --json > profile.json
    """
    opt.check_video_path(video)
    question = opt.check_questions([question], "profile")[0]
    opt.check_sampling(fps, max_frames)
    opt.check_max_pixels(max_pixels)
    opt.check_at_least("--warmup", warmup, 1)
    opt.check_at_least("--repeats", repeats, 1)
    opt.check_at_least("--heatmap-layer", heatmap_layer, 0)
    overrides = opt.sparsity_overrides(cube, top_p, attn_top_p, ffn_top_p, layers)

    with loading():  # torch: only once the flags are good
        from ..api import check_plot_path, decode_video, is_bundled_demo, load_video_qa, plot_profile, profile_prefill

    if plot is not None:
        plot = check_plot_path(plot)  # before the long profile; a missing matplotlib is no usage error: exit 1
    with ProgressBar(enabled=not quiet) as bar:
        bar.stage(f"decoding {video.name}")
        decoded = decode_video(video, fps=fps, max_frames=max_frames, backend=decoder)
        bar.stage("loading the model")
        with loading():  # transformers imports the model's modules now
            loaded = load_video_qa(model, device=device, overrides=overrides, kernel=kernel)
        bar.stage("preparing the video")
        result = profile_prefill(
            loaded.qa, decoded, question, max_pixels=max_pixels, warmup=warmup, repeats=repeats,
            heatmap_layer=heatmap_layer, progress=bar.update,
        )
    result.extra.update(model=str(loaded.path), config_source=loaded.config_source)
    report = result.to_json()
    if plot is not None:
        plot_profile(report, plot)
    write_report(report, [*profile_tables(report), profile_summary(report)], json_out=json_out, quiet=quiet)
    if not quiet:
        if loaded.bundled and not is_bundled_demo(video):
            note(BUNDLED_MODEL_NOTE)
        if plot is not None:
            note(f"wrote {plot}")
