"""The CLI's error boundary in process: questions refused early, -h and -q on every command, flag-named
messages, $ADASPARK_MODEL named, convert's errno messages and its exit code around Ctrl-C."""

from __future__ import annotations

import errno
import json
import shutil
from collections import namedtuple

import pytest

from video_factory import write_video

from adaspark_cli.checkpoint import convert as convert_mod
from adaspark_cli.checkpoint import is_converted, read_config_json
from adaspark_cli.cli import defaults, render
from adaspark_cli.cli.app import app
from adaspark_cli.cli.options import MAX_QUESTION_CHARS
from adaspark_cli.config import AdaSparkConfig, config_from_checkpoint
from adaspark_cli.errors import CheckpointError

COMMANDS = ("ask", "profile", "convert", "eval")


def invoke(runner, *args, **kwargs):
    return runner.invoke(app, [*map(str, args)], catch_exceptions=False, **kwargs)


def one_line_error(res, code: int) -> str:
    assert res.exit_code == code, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_defaults_are_the_librarys():
    from adaspark_cli.attention.kernels import KERNELS
    from adaspark_cli.qa.calibrate import DEFAULT_GRID
    from adaspark_cli.qa.profile import DEFAULT_QUESTION
    from adaspark_cli.qa.session import DEFAULT_MAX_PIXELS, MIN_PIXELS
    from adaspark_cli.synth.scene import MAX_FRAMES, MIN_FRAMES, TASKS
    from adaspark_cli.synth.suite import DEFAULT_DEPTHS, DEFAULT_LENGTHS
    from adaspark_cli.video.decode import BACKENDS

    assert (defaults.DEFAULT_MAX_PIXELS, defaults.MIN_PIXELS) == (DEFAULT_MAX_PIXELS, MIN_PIXELS)
    assert (defaults.DEFAULT_QUESTION, defaults.DEFAULT_GRID) == (DEFAULT_QUESTION, DEFAULT_GRID)
    assert (defaults.KERNELS, defaults.DECODERS) == (KERNELS, BACKENDS)
    assert (defaults.TASKS, defaults.MIN_FRAMES, defaults.MAX_FRAMES) == (TASKS, MIN_FRAMES, MAX_FRAMES)
    assert (defaults.DEFAULT_LENGTHS, defaults.DEFAULT_DEPTHS) == (DEFAULT_LENGTHS, DEFAULT_DEPTHS)


@pytest.mark.parametrize("command", COMMANDS)
def test_h_is_help_on_every_command(runner, command):
    short, long = invoke(runner, command, "-h"), invoke(runner, command, "--help")
    assert short.exit_code == 0 and short.stdout == long.stdout and "-h, --help" in short.stdout


@pytest.mark.parametrize(
    "args,expected",
    [
        pytest.param(["ask", "clip.mp4", "q?", "--kernel", "fast"],
                     "error: --kernel 'fast' is not a kernel; use --kernel auto, reference, gathered, flex, fa4", id="kernel"),
        pytest.param(["eval", "--decoder", "av"], "error: --decoder 'av' is not a decoder; use --decoder auto, decord, pyav",
                     id="decoder"),
        pytest.param(["profile", "clip.mp4", "--device", "gpu"],
                     "error: --device 'gpu' is not a device; use --device auto, cpu, mps, cuda or cuda:N", id="device"),
        pytest.param(["ask", "clip.mp4", "q?", "--bogus"], "error: No such option: --bogus (see adaspark ask -h)",
                     id="unknown-option"),
        pytest.param(["ask"], "error: Missing argument 'VIDEO' (see adaspark ask -h)", id="missing-argument"),
        pytest.param(["convert", "src", "out", "--fps", "x"], "error: Invalid value for '--fps': ", id="not-a-number"),
    ],
)
def test_usage_errors_found_while_parsing_are_one_line(runner, monkeypatch, args, expected):
    from adaspark_cli import qa

    monkeypatch.setattr(qa, "load_video_qa", lambda *a, **k: pytest.fail("the model was loaded"))
    assert one_line_error(invoke(runner, *args), 2).startswith(expected)


@pytest.mark.parametrize("command", ["ask", "profile", "convert", "eval", "batch"])
def test_help_lists_the_values_of_choice_flags(runner, command):
    text = invoke(runner, command, "-h").stdout
    assert "--decoder <auto|decord|pyav>" in text and "--device <auto|cpu|mps|cuda|cuda:N>" in text
    assert ("--kernel <auto|reference|gathered|flex|fa4>" in text) == (command in ("ask", "profile", "batch"))


def test_device_check_is_the_librarys():
    from adaspark_cli.api import check_device
    from adaspark_cli.errors import AdasparkError

    for good in ("auto", "cpu", "mps", "cuda", "cuda:3"):
        check_device(good)
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", None):
        with pytest.raises(AdasparkError, match="is not a device; use --device auto, cpu, mps, cuda or cuda:N"):
            check_device(bad)


# --- questions --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("second") / "other.mp4", n_frames=4, width=32, height=32)


@pytest.mark.parametrize(
    "question,fragment",
    [
        pytest.param("", "QUESTION is empty", id="empty"),
        pytest.param(" \t\n", "QUESTION is empty", id="whitespace"),
        pytest.param("x" * (MAX_QUESTION_CHARS + 1), f"has {MAX_QUESTION_CHARS + 1:,} characters; the limit is "
                     f"{MAX_QUESTION_CHARS:,}", id="too-long"),
        pytest.param("{second}", "is a video file, not a question; ask takes one VIDEO and then questions", id="video"),
        pytest.param("b.MKV", "is a video file, not a question", id="video-name"),
    ],
)
def test_bad_question_is_refused_before_the_model_loads(runner, clip, second_video, question, fragment, monkeypatch):
    from adaspark_cli import qa

    monkeypatch.setattr(qa, "load_video_qa", lambda *a, **k: pytest.fail("the model was loaded"))
    res = invoke(runner, "ask", clip, "first?", question.format(second=second_video))
    assert fragment in one_line_error(res, 2)


def test_questions_naming_a_video_are_still_questions(runner, clip, tiny_checkpoint):
    # a video suffix inside a sentence, or a question mark after it, is a question
    res = invoke(runner, "ask", clip, "what is in clip.mp4?", "is it like a.mp4 or b.webm", "--model", tiny_checkpoint,
                 "--json", "-q", "--max-frames", "2", "--max-new-tokens", "1", "--dense")
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["question"] for x in res.stdout.splitlines()] == ["what is in clip.mp4?",
                                                                            "is it like a.mp4 or b.webm"]


@pytest.mark.parametrize("command", ["ask", "profile"])
def test_a_url_is_refused_as_such(runner, command):
    err = one_line_error(invoke(runner, command, "https://example.com/clip.mp4", "q?"), 2)
    assert "URLs are not supported" in err and "curl" in err


def test_profile_refuses_an_empty_question(runner, clip):
    assert "QUESTION is empty" in one_line_error(invoke(runner, "profile", clip, "  "), 2)


def test_interactive_refuses_a_bad_line_and_goes_on(runner, clip, tiny_checkpoint):
    res = invoke(runner, "ask", clip, "--model", tiny_checkpoint, "-i", "--json", "-q", "--max-new-tokens", "1",
                 "--max-frames", "2", "--dense", input="first?\n" + "y" * (MAX_QUESTION_CHARS + 5) + "\nsecond?\n\n")
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["question"] for x in res.stdout.splitlines()] == ["first?", "second?"]
    assert res.stderr.strip().startswith("error: QUESTION has") and "\n" not in res.stderr.strip()


# --- -q hides what its help says ----------------------------------------------------------------------------


def test_ask_quiet_hides_the_question_labels(runner, clip, tiny_checkpoint):
    args = ["ask", clip, "one?", "two?", "--model", tiny_checkpoint, "--max-frames", "2", "--max-new-tokens", "1"]
    loud, quiet = invoke(runner, *args), invoke(runner, *args, "-q")
    assert "Q: one?" in loud.stderr and "attn density" in loud.stderr
    assert quiet.exit_code == 0 and quiet.stderr == "" and len(quiet.stdout.splitlines()) == 2


def test_eval_quiet_json_is_only_json(runner, tmp_path, tiny_checkpoint):
    res = invoke(runner, "eval", "--model", tiny_checkpoint, "--lengths", "16", "--depths", "0.5", "--tasks", "retrieval",
                 "--max-new-tokens", "1", "--json", "-q", "--workers", "1")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["items"] == 1 and res.stderr == ""


# --- messages -----------------------------------------------------------------------------------------------


def test_bad_adaspark_model_is_named(runner, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("ADASPARK_MODEL", str(tmp_path / "gone"))
    err = one_line_error(invoke(runner, "ask", clip, "q?", "-q"), 1)
    assert err.startswith(f"error: $ADASPARK_MODEL is '{tmp_path / 'gone'}' (no --model given): ")
    assert err.endswith("fix or unset ADASPARK_MODEL, or pass --model")
    # an explicit --model is named as itself, not as the variable
    err = one_line_error(invoke(runner, "ask", clip, "q?", "--model", tmp_path / "also-gone"), 1)
    assert "ADASPARK_MODEL" not in err
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setenv("ADASPARK_MODEL", str(tmp_path / "llama"))
    err = one_line_error(invoke(runner, "ask", clip, "q?", "-q"), 1)
    assert err.startswith("error: $ADASPARK_MODEL is") and "llama" in err


def test_stdout_errors_name_stdout(runner, clip, tiny_checkpoint, monkeypatch):
    def full(text):
        raise render.StdoutError(OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(render, "write_stdout", full)
    res = invoke(runner, "ask", clip, "q?", "--model", tiny_checkpoint, "--max-frames", "2", "-q", "--dense")
    assert one_line_error(res, 1) == ("error: cannot write to stdout: no space left on the disk or device it goes to; "
                                      "free some space or redirect it elsewhere")


def test_broken_pipe_is_quiet_141(runner, clip, tiny_checkpoint, monkeypatch):
    def broken(text):
        raise render.StdoutError(BrokenPipeError(errno.EPIPE, "Broken pipe"))

    monkeypatch.setattr(render, "write_stdout", broken)
    res = invoke(runner, "ask", clip, "q?", "--model", tiny_checkpoint, "--max-frames", "2", "-q", "--dense")
    assert res.exit_code == 141 and res.stderr == ""


# --- convert: errno messages, exit code around Ctrl-C --------------------------------------------------------


@pytest.mark.parametrize(
    "code,fragment",
    [
        pytest.param(errno.EROFS, "is on a read-only filesystem; nothing was written; pick an OUT on a writable disk",
                     id="read-only"),
        pytest.param(errno.EACCES, "no permission to write in", id="permission"),
        pytest.param(errno.ENOSPC, "ran out of disk space while writing", id="full"),
    ],
)
def test_convert_names_each_write_failure(runner, tiny_checkpoint, tmp_path, monkeypatch, code, fragment):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(convert_mod.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))  # as a read-only mount

    def refused(*args, **kwargs):
        raise OSError(code, errno.errorcode[code])

    monkeypatch.setattr(convert_mod.tempfile, "mkdtemp", refused)
    err = one_line_error(invoke(runner, "convert", tiny_checkpoint, tmp_path / "out"), 1)
    assert fragment in err and (code == errno.ENOSPC or "disk space" not in err), err
    assert list(tmp_path.iterdir()) == []


CONFIG_FLAGS = ("--cube", "1x2x2", "--attn-top-p", "0.8", "--ffn-top-p", "0.6")
CONFIG = AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.8, ffn_top_p=0.6)


def test_is_converted_checks_out_against_src(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert not is_converted(tiny_checkpoint, out, CONFIG, None)
    convert_mod.convert_checkpoint(tiny_checkpoint, out, CONFIG)
    assert is_converted(tiny_checkpoint, out, CONFIG, None)
    assert not is_converted(tiny_checkpoint, out, CONFIG.replace(attn_top_p=0.7), None)
    weight = next(out.glob("*.safetensors"))
    weight.unlink()
    weight.write_bytes(b"short")
    assert not is_converted(tiny_checkpoint, out, CONFIG, None)


def test_ctrl_c_after_out_is_written_exits_0(runner, tiny_checkpoint, tmp_path, monkeypatch):
    def interrupted(text):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "write_stdout", interrupted)  # while printing OUT's path, after the write
    res = invoke(runner, "convert", tiny_checkpoint, tmp_path / "out", *CONFIG_FLAGS)
    assert res.exit_code == 0 and res.stderr.strip() == f"interrupted, but {tmp_path / 'out'} is complete"
    assert config_from_checkpoint(read_config_json(tmp_path / "out")) == CONFIG


@pytest.mark.parametrize("force", [False, True])
def test_ctrl_c_just_after_the_rename_exits_0_and_leaves_no_debris(runner, tiny_checkpoint, tmp_path, monkeypatch,
                                                                    force):
    out = tmp_path / "out"
    if force:
        shutil.copytree(tiny_checkpoint, out)  # an old OUT, replaced
    rename = convert_mod.os.rename

    def rename_then_interrupt(src, dst):
        rename(src, dst)
        if convert_mod.TMP_PREFIX in str(src):
            raise KeyboardInterrupt  # lands after the rename did its work

    monkeypatch.setattr(convert_mod.os, "rename", rename_then_interrupt)
    res = invoke(runner, "convert", tiny_checkpoint, out, *CONFIG_FLAGS, *(["--force"] if force else []))
    assert res.exit_code == 0 and res.stderr.strip() == f"interrupted, but {out} is complete", res.output
    assert config_from_checkpoint(read_config_json(out)) == CONFIG
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left


def test_ctrl_c_before_the_rename_exits_130_and_keeps_the_old_out(runner, tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(tiny_checkpoint, out)
    before = read_config_json(out)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_mod, "install_out", interrupted)
    res = invoke(runner, "convert", tiny_checkpoint, out, *CONFIG_FLAGS, "--force")
    assert res.exit_code == 130
    assert res.stderr.strip() == f"interrupted; {out} was not written (the existing one is unchanged)"
    assert read_config_json(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_check_convert_paths_refuses_a_read_only_folder_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(convert_mod.tempfile, "mkdtemp", read_only)
    with pytest.raises(CheckpointError, match="read-only filesystem"):
        convert_mod.check_convert_paths(tiny_checkpoint, tmp_path / "out", force=False)


def test_main_turns_a_late_ctrl_c_into_the_commands_note(monkeypatch, capsys):
    # Typer turns a Ctrl-C that lands while a command returns into a silent exit 130
    from adaspark_cli.cli import app as app_mod
    from adaspark_cli.cli import commands, errors

    def late_interrupt(**kwargs):
        errors.mark_complete("interrupted, but OUT is complete")
        raise SystemExit(130)

    monkeypatch.setattr(commands, "app", late_interrupt)
    monkeypatch.setattr(app_mod.signal, "signal", lambda *args: None)  # leave pytest's own SIGINT handler alone
    monkeypatch.setattr(errors.state, "complete", None)
    with pytest.raises(SystemExit) as exit_info:
        app_mod.main()
    assert exit_info.value.code == 0 and capsys.readouterr().err == "interrupted, but OUT is complete\n"


class _BrokenPipe:
    def write(self, text):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        pass

    def isatty(self):
        return False


def test_rich_output_into_a_broken_pipe_reaches_the_boundary(monkeypatch):
    # Rich would raise SystemExit(1) itself; the boundary must see the pipe error and exit 141 quietly
    from rich.table import Table

    monkeypatch.setattr("sys.stdout", _BrokenPipe())
    with pytest.raises(render.StdoutError) as info:
        render.print_stdout(Table("a"))
    assert info.value.error.errno == errno.EPIPE
    # the same kind of console as render's own stderr one, writing into the broken pipe
    monkeypatch.setattr(render, "err_console", type(render.err_console)(file=_BrokenPipe(), highlight=False))
    with pytest.raises(BrokenPipeError):
        render.note("a note on a stderr nobody reads")


def test_a_command_runs_with_ctrl_c_as_keyboard_interrupt():
    # main ends the process at once on Ctrl-C while the app loads; a command must get a KeyboardInterrupt
    # again (convert removes its temporary folder on one), except while it loads torch (loading())
    import signal

    from adaspark_cli.cli.errors import handle_errors, loading
    from adaspark_cli.cli.interrupt import exit_interrupted

    seen = []

    @handle_errors
    def command():
        seen.append(signal.getsignal(signal.SIGINT))
        with loading():
            seen.append(signal.getsignal(signal.SIGINT))
        seen.append(signal.getsignal(signal.SIGINT))

    previous = signal.signal(signal.SIGINT, exit_interrupted)
    try:
        command()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.default_int_handler, exit_interrupted, signal.default_int_handler]
