"""`adaspark ask` end to end on a tiny model, and every bad input: one line, non-zero exit, no traceback."""

import json
import re

import pytest

from video_factory import corrupt, damage_packets, truncate, write_audio_only, write_garbage, write_text, write_video

from adaspark_cli.cli.app import app

JSON_KEYS = {
    "question", "answer", "mode", "frames", "video_tokens", "cubes", "prefill_seconds", "video_prefill_seconds",
    "video_prefill_reused", "decode_seconds", "generated_tokens", "stopped", "timing", "layers", "flops", "decode",
}
TIMING_KEYS = {"decode_s", "preprocess_s", "vision_s", "prefill_s", "first_token_s"}
LAYER_KEYS = {
    "layer", "sparse", "kernel", "dense_fallback", "cubes_total", "cubes_attended_mean", "cubes_attended_min",
    "cubes_attended_max", "attn_density", "ffn_kept", "ffn_total",
}


PYTHON_KEYWORD = re.compile(r"\b[a-z_]+=\S")  # fps=2.0, backend='pyav'


@pytest.fixture(scope="module")
def clip(tmp_path_factory):  # longer than conftest's: 4 s, so --max-frames 8 takes 8 frames
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n_frames=48, fps=12.0, width=112, height=112)


def ask(runner, *args):
    return runner.invoke(app, ["ask", *map(str, args)], catch_exceptions=False)


def test_ask_json_several_questions(runner, clip, tiny_checkpoint):
    res = ask(runner, clip, "what color?", "how many?", "--model", tiny_checkpoint, "--json", "--cube", "1x2x2",
              "--top-p", "0.5", "--max-new-tokens", "3", "--max-frames", "8")
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == JSON_KEYS and set(first["layers"][0]) == LAYER_KEYS
    for row in first["layers"]:  # the CPU default: the gathered kernel, or dense where the selection came out near-dense
        assert (row["kernel"], row["dense_fallback"]) in {("gathered", False), ("sdpa", True)}, row
    assert set(first["flops"]) == {"dense", "sparse", "reduction"}
    assert first["question"] == "what color?" and second["question"] == "how many?"
    assert first["mode"] == "adaspark" and first["frames"] == 8 and first["video_tokens"] == 4 * 4 * 4
    assert not first["video_prefill_reused"] and second["video_prefill_reused"]
    assert first["flops"]["reduction"] > 0
    assert 1 <= first["generated_tokens"] <= 3
    for item in (first, second):
        t = item["timing"]
        assert set(t) == TIMING_KEYS and all(v >= 0 for v in t.values())
        assert t["first_token_s"] == pytest.approx(t["decode_s"] + t["preprocess_s"] + t["vision_s"] + t["prefill_s"])
    assert first["timing"]["decode_s"] > 0 and first["timing"]["vision_s"] > 0
    assert second["timing"]["decode_s"] == second["timing"]["vision_s"] == 0  # reused: only its own prefill


def test_ask_dense_streams_answer_and_table(runner, clip, tiny_checkpoint):
    res = ask(runner, clip, "what color?", "--model", tiny_checkpoint, "--dense", "--max-new-tokens", "2",
              "--max-frames", "4")
    assert res.exit_code == 0, res.output
    assert res.stdout.endswith("\n") and "{" not in res.stdout  # the answer, not JSON
    assert "dense: 4 frames" in res.stderr and "attn density" in res.stderr
    assert "running on the CPU" in res.stderr


def test_quiet_prints_only_the_answer(runner, clip, tiny_checkpoint):
    res = ask(runner, clip, "what color?", "--model", tiny_checkpoint, "-q", "--max-new-tokens", "2", "--max-frames", "4")
    assert res.exit_code == 0 and res.stderr == ""


def test_interactive_reads_questions_until_empty_line(runner, clip, tiny_checkpoint):
    res = runner.invoke(app, ["ask", str(clip), "--model", str(tiny_checkpoint), "-i", "--json", "-q",
                              "--max-new-tokens", "1", "--max-frames", "4"], input="first?\nsecond?\n\nignored?\n")
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["question"] for x in res.stdout.splitlines()] == ["first?", "second?"]


def test_checkpoint_block_is_used_and_flags_override(runner, clip, tiny_checkpoint, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["adaspark"] = {"version": 1, "cube": [1, 2, 2], "attn_top_p": 1.0, "ffn_top_p": 1.0, "sparse_layers": [1]}
    (ck / "config.json").write_text(json.dumps(cfg))
    res = ask(runner, clip, "q?", "--model", ck, "--json", "-q", "--max-new-tokens", "1", "--max-frames", "4")
    out = json.loads(res.stdout)
    assert out["cubes"] == 2 * 2 * 2 and [r["sparse"] for r in out["layers"]] == [False, True]
    assert out["flops"]["reduction"] <= 0  # p = 1: nothing saved, scoring costs a little
    res = ask(runner, clip, "q?", "--model", ck, "--json", "-q", "--max-new-tokens", "1", "--max-frames", "4",
              "--layers", "all", "--top-p", "0.3")
    out = json.loads(res.stdout)
    assert [r["sparse"] for r in out["layers"]] == [True, True] and out["flops"]["reduction"] > 0


# the keys of `ask --json` that depend on the frames and the model, not on the clock
SAME_KEYS = sorted(JSON_KEYS - {"prefill_seconds", "video_prefill_seconds", "decode_seconds", "timing"})


def _answers(res):
    assert res.exit_code == 0, res.output
    return [{k: v for k, v in json.loads(line).items() if k in SAME_KEYS} for line in res.stdout.strip().splitlines()]


def test_ask_pipelined_decoder_gives_the_one_shot_answers(runner, clip, tiny_checkpoint):
    # --decoder auto (the pipelined stream, vision tower chunk by chunk) against pyav (one array, one tower call)
    args = [clip, "what color?", "how many?", "--model", tiny_checkpoint, "--json", "--cube", "1x2x2", "--top-p", "0.5",
            "--max-new-tokens", "4", "--max-frames", "8"]
    piped = ask(runner, *args)
    one_shot = ask(runner, *args, "--decoder", "pyav")
    assert "(pyav, pipelined, 4.0 s video)" in piped.stderr, piped.stderr
    assert "(pyav, 4.0 s video)" in one_shot.stderr, one_shot.stderr
    first, second = _answers(piped)
    assert first["frames"] == 8 and first["flops"]["reduction"] > 0 and first["generated_tokens"] >= 1
    assert [first, second] == _answers(one_shot)
    timing = json.loads(piped.stdout.splitlines()[0])["timing"]
    assert timing["decode_s"] > 0 and timing["vision_s"] > 0
    assert timing["first_token_s"] == pytest.approx(sum(v for k, v in timing.items() if k != "first_token_s"))


def test_ask_falls_back_to_one_shot_decoding_without_usable_pts(runner, clip, tiny_checkpoint, monkeypatch):
    from adaspark_cli.video import stream

    args = [clip, "what color?", "--model", tiny_checkpoint, "--json", "--dense", "--max-new-tokens", "3", "--max-frames", "6"]
    reference = _answers(ask(runner, *args, "--decoder", "pyav"))
    monkeypatch.setattr(stream, "index_packets", lambda pts, keys: None)  # as for a file with missing pts
    assert not stream.open_video_stream(clip).pipelined
    res = ask(runner, *args)
    assert "(pyav, 4.0 s video)" in res.stderr and "pipelined" not in res.stderr, res.stderr
    assert _answers(res) == reference


def bad_videos(tmp):
    good = write_video(tmp / "good.mp4", n_frames=24, width=64, height=64)
    return {
        "missing": (tmp / "nope.mp4", "not found"),
        "directory": (tmp, "directory"),
        "text-file": (write_text(tmp / "notes.mp4"), ""),
        "garbage": (write_garbage(tmp / "noise.mp4"), ""),
        "truncated": (truncate(good, tmp / "cut.mp4", keep=0.3), ""),
        "corrupt": (corrupt(good, tmp / "bad.mp4"), ""),
        "audio-only": (write_audio_only(tmp / "tone.m4a"), "no video stream"),
        "no-frames": (write_video(tmp / "empty.avi", codec="mpeg4", n_frames=0), ""),
    }


@pytest.mark.parametrize(
    "case", ["missing", "directory", "text-file", "garbage", "truncated", "corrupt", "audio-only", "no-frames"]
)
def test_bad_video_is_one_line_error(runner, tiny_checkpoint, tmp_path, case):
    path, fragment = bad_videos(tmp_path)[case]
    res = ask(runner, path, "q?", "--model", tiny_checkpoint)
    assert res.exit_code == 1, res.output
    assert res.stdout == ""
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err


@pytest.mark.parametrize("decoder", ["auto", "pyav"])
def test_damage_found_while_decoding_is_one_line_error(runner, tiny_checkpoint, tmp_path, decoder):
    # the file opens; its damaged packets are hit while decoding: with the pipelined reader (auto) that is
    # after the model has loaded, so the notes come first and the error is the last line
    path = damage_packets(write_video(tmp_path / "full.mp4"), tmp_path / "damaged.mp4", range(8, 48))  # too much to skip
    res = ask(runner, path, "q?", "--model", tiny_checkpoint, "--decoder", decoder)
    assert res.exit_code == 1, res.output
    assert res.stdout == "" and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: video is corrupt:") and last.endswith("re-encode it"), res.stderr
    quiet = ask(runner, path, "q?", "--model", tiny_checkpoint, "--decoder", decoder, "-q")
    assert quiet.exit_code == 1 and quiet.stderr.strip() == last


@pytest.mark.parametrize(
    "args,fragment,code",
    [
        pytest.param(["--cube", "2x8"], "--cube", 2, id="cube-two-dims"),
        pytest.param(["--cube", "0x8x8"], "--cube", 2, id="cube-zero"),
        pytest.param(["--cube", "axbxc"], "--cube", 2, id="cube-letters"),
        pytest.param(["--cube", "1000x1000x1000"], "each side must be at most 64", 2, id="cube-huge"),
        pytest.param(["--top-p", "0"], "--top-p", 2, id="top-p-zero"),
        pytest.param(["--attn-top-p", "1.5"], "--attn-top-p", 2, id="attn-top-p-above-one"),
        pytest.param(["--ffn-top-p", "nan"], "--ffn-top-p", 2, id="ffn-top-p-nan"),
        pytest.param(["--layers", "3-1"], "--layers", 2, id="layers-reversed"),
        pytest.param(["--layers", "0,7"], "layers", 1, id="layer-past-the-model"),  # known once the model is read
        pytest.param(["--fps", "0"], "--fps must be a number > 0, got 0; e.g. --fps 2", 2, id="fps-zero"),
        pytest.param(["--fps", "inf"], "--fps", 2, id="fps-inf"),
        pytest.param(["--max-frames", "0"], "--max-frames must be at least 1, got 0; e.g. --max-frames 256", 2,
                     id="max-frames-zero"),
        pytest.param(["--max-pixels", "100"], "--max-pixels", 2, id="max-pixels-tiny"),
        pytest.param(["--decoder", "ffmpeg"], "use --decoder auto, decord, pyav", 2, id="unknown-decoder"),
        pytest.param(["--max-new-tokens", "0"], "--max-new-tokens", 2, id="max-new-tokens-zero"),
        pytest.param(["--device", "tpu:9"], "--device", 2, id="bad-device"),
        pytest.param(["--kernel", "fast"], "--kernel", 2, id="unknown-kernel"),
    ],
)
def test_bad_option_is_one_line_error(runner, clip, tiny_checkpoint, args, fragment, code):
    res = ask(runner, clip, "q?", "--model", tiny_checkpoint, *args)
    assert res.exit_code == code, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err and not PYTHON_KEYWORD.search(err), err  # flags, never Python keywords (fps=2.0)


def test_no_question_is_an_error(runner, clip, tiny_checkpoint):
    res = ask(runner, clip, "--model", tiny_checkpoint)
    assert res.exit_code == 2 and "no question" in res.stderr


@pytest.mark.parametrize(
    "model,fragment",
    [
        pytest.param("{tmp}/missing-dir", "does not exist", id="missing-dir"),
        pytest.param("{tmp}/llama", "llama", id="not-qwen"),
        pytest.param("nobody/not-a-model", "not-a-model", id="uncached-hub-id-offline"),
    ],
)
def test_bad_model_is_one_line_error(runner, clip, tmp_path, model, fragment):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    res = ask(runner, clip, "q?", "--model", model.format(tmp=tmp_path))
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err


def test_ctrl_c_during_answer_stops_cleanly(runner, clip, tiny_checkpoint, monkeypatch):
    from adaspark_cli.qa import session

    def interrupted(self):
        yield "partial"
        raise KeyboardInterrupt

    monkeypatch.setattr(session.AnswerStream, "__iter__", interrupted)
    res = ask(runner, clip, "q?", "--model", tiny_checkpoint, "--max-frames", "4")
    assert res.exit_code == 130
    assert res.stdout.startswith("partial") and "interrupted" in res.stderr and "Traceback" not in res.stderr


def test_version_and_help(runner):
    assert runner.invoke(app, ["--version"]).stdout.startswith("adaspark ")
    res = runner.invoke(app, ["ask", "--help"])
    assert res.exit_code == 0 and "Examples" in res.stdout and "--attn-top-p" in res.stdout


@pytest.mark.parametrize("kernel", ["fa4", "flex"])
def test_gpu_kernel_on_the_cpu_is_one_line(runner, clip, tiny_checkpoint, kernel):
    res = ask(runner, clip, "q?", "--model", tiny_checkpoint, "--kernel", kernel)
    assert res.exit_code == 1, res.output
    err = res.stderr.strip().splitlines()[-1]
    assert err == f"error: --kernel {kernel} needs a CUDA GPU; on the CPU use --kernel auto (gathered) or reference"


def test_progress_off_a_terminal_is_a_line_every_half_minute(capsys):
    """stderr captured (not a terminal): no bar, and a plain progress line only once 30 s have passed since the
    last one, so short work stays silent and a long calibration is not."""
    from adaspark_cli.cli.render import ProgressBar

    now = [0.0]
    with ProgressBar(clock=lambda: now[0]) as bar:
        bar.stage("loading the model")
        for done, t in ((1, 10.0), (2, 31.0), (3, 45.0), (4, 62.0)):
            now[0] = t
            bar.update("calibrating", done, 9)
    assert capsys.readouterr().err.splitlines() == ["calibrating (2/9), 31 s", "calibrating (4/9), 62 s"]
    with ProgressBar(enabled=False, clock=lambda: now[0]) as bar:  # --quiet
        now[0] = 500.0
        bar.update("calibrating", 5, 9)
    assert capsys.readouterr().err == ""
