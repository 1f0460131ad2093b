"""Generate docs/cli.md from the real `--help` texts: `python -m adaspark_cli.cli.docs > docs/cli.md`.

A test compares the file with this output, so the docs cannot go stale.
"""

from __future__ import annotations

import typer

from .commands import app
from .options import MAX_QUESTION_CHARS

JSON_KEYS = """\
## `ask --json`

One JSON object per question, one per line, on stdout. Keys (stable):

| key | meaning |
|---|---|
| `question`, `answer` | the question and the full answer text |
| `mode` | `"adaspark"` or `"dense"` (`--dense`) |
| `frames`, `video_tokens`, `cubes` | sampled frames, video tokens in the language model, cubes in the layout |
| `prefill_seconds` | this question's prefill time; includes the video prefill unless it was reused |
| `video_prefill_seconds`, `video_prefill_reused` | the one-off video prefill time, and whether this question reused it |
| `decode_seconds`, `generated_tokens`, `stopped` | answer decoding; `stopped` is `"eos"` or `"max_new_tokens"` |
| `timing` | the wait for the first answer token: `decode_s` (video decoding), `preprocess_s` (processor), `vision_s` (vision tower), `prefill_s` (language-model prefill), `first_token_s` (their sum; model loading excluded). A question that reuses the video prefill has only `prefill_s` |
| `layers[]` | per layer: `layer`, `sparse`, `kernel` (the attention that ran: `fa4`, `flex`, `gathered`, `reference`, or `sdpa` for dense), `dense_fallback` (a sparse layer whose selection kept so much that it ran dense), `cubes_total` (cubes available per video query, mean), `cubes_attended_mean`, `cubes_attended_min`, `cubes_attended_max`, `attn_density` (attended keys / causal keys over video queries), `ffn_kept`, `ffn_total` (video tokens through the FFN / all video tokens) |
| `flops` | `dense` and `sparse` (each `attention`, `ffn`, `rest`, `scoring`, `total`) analytic prefill FLOPs of the whole prompt, and `reduction` (1 - sparse / dense) |
| `decode` | answer decoding: `steps` (forward calls after the question, one per answer token that needed one), `temperature` (0: greedy, the default; `--temperature`), `seed` (`--seed`, or null: greedy, or a random seed), `cuda_graph` (whether the decode steps were replayed from a CUDA graph: on CUDA; `note` says why not where the capture failed) |

## `batch --out` records

One JSON object per video, one per line, in the `--out` file (or on stdout with `--out -`), appended as
each video finishes: in INPUT's order with one replica, in the order videos finish with several
(`--gpus`, `--ray`). Keys (stable):

| key | meaning |
|---|---|
| `id` | the manifest's `id`, else the `video` path as written (the folder / glob input: the path as found); a resume skips the ids already in the file |
| `video` | the video path as written in the manifest, or as found |
| `answers[]` | the `ask --json` object (keys above) of each question, in the manifest's order; empty when `error` is set |
| `error` | null, or the one-line reason the video could not be read or answered (the run went on) |

## `batch --json` summary

With `--json`, `batch` ends with one JSON object on stderr (its last line) instead of the text summary;
stdout stays clean. Keys: `out` (the `--out` value), `total` (videos in INPUT), `answered` and `failed`
(in this run), `skipped` (already in `--out`), `seconds` (this run, model loading included),
`videos_per_minute` (answered and failed in this run, per minute of `seconds`, or null), `mean_first_token_s`
(mean over the videos answered of the first question's `timing.first_token_s`, or null),
`mean_flops_reduction` (mean of every answer's `flops.reduction`, or null).
"""


EXIT_CODES = """\
## Exit codes and streams

stdout carries answers, JSON (`--json`), `batch --out -`'s records, `convert`'s OUT path, and the tables of `profile` and `eval`
when they are the output (without `--json`). Notes, progress bars, `ask`'s per-layer tables and every
error go to stderr; `-q` hides the notes, progress and the tables on stderr. Every error is one line.
When stderr is not a terminal (a log file, a pipe), the progress bars are off and a plain line such as
`answering counting-256-d0.50-3 (41/540), 63 s` says where long work is, once every 30 seconds.

| code | meaning |
|---|---|
| 0 | done; for `convert`: OUT is complete (also after a Ctrl-C that came too late to stop it, with a note) |
| 1 | an error of the input or the machine: the video, the model, the disk, stdout that cannot be written (e.g. `> /dev/full`, or closed with `>&-`); for `batch`: at least one video failed (its record carries the error; the others were answered) |
| 2 | a usage error: a bad flag value or combination (a value outside a flag's set, e.g. `--kernel`, `--decoder`, `--device`, whose values the help lists), an unknown option or command, a bad `batch` manifest (the message names the line), a missing argument, an empty or too long question (at most {max_chars:,} characters), a second video given as a question, a URL as VIDEO |
| 130 | interrupted (Ctrl-C at any moment, start-up included); for `convert`: OUT was not written |
| 141 | stdout's reader went away (`\\| head -c1`): no message, as for a program killed by SIGPIPE |

An unexpected failure is an adaspark bug: one `internal error:` line; `ADASPARK_DEBUG=1` shows the traceback.
"""


def _help(args: list[str]) -> str:
    command = typer.main.get_command(app)
    settings = {"terminal_width": 100, "max_content_width": 100, **command.context_settings}  # -h, --help
    with typer.Context(command, info_name="adaspark", **settings) as ctx:
        for name in args:
            sub = ctx.command.get_command(ctx, name)  # type: ignore[attr-defined]
            ctx = typer.Context(sub, info_name=name, parent=ctx, terminal_width=100, max_content_width=100)
        return ctx.get_help()


def render_cli_docs() -> str:
    command = typer.main.get_command(app)
    names = sorted(command.commands)  # type: ignore[attr-defined]
    parts = ["# adaspark command line\n", "Generated from `--help` by `python -m adaspark_cli.cli.docs > docs/cli.md`.\n"]
    parts.append("## adaspark\n\n```\n" + _help([]) + "\n```\n")
    for name in names:
        parts.append(f"## adaspark {name}\n\n```\n" + _help([name]) + "\n```\n")
    parts.append(EXIT_CODES.format(max_chars=MAX_QUESTION_CHARS))
    parts.append(JSON_KEYS)
    return "\n".join(parts)


if __name__ == "__main__":
    print(render_cli_docs(), end="")
