"""`adaspark` as a real process: what loads for --help, closed and broken stdout, Ctrl-C at chosen moments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "numpy", "av", "decord")

# Runs the console script's main() and prints, on the last line of stderr, which heavy modules were loaded.
PROBE = textwrap.dedent(
    """
    import atexit, json, sys
    atexit.register(lambda: sys.stderr.write("\\nLOADED " + json.dumps([m for m in {heavy!r} if m in sys.modules])))
    sys.argv = ["adaspark", *{args!r}]
    from adaspark_cli.cli.app import main
    main()
    """
)

# Raises KeyboardInterrupt when torch starts loading, as a Ctrl-C in the first seconds of a command would.
INTERRUPT_AT_TORCH = textwrap.dedent(
    """
    import sys
    class Interrupt:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                raise KeyboardInterrupt
    sys.meta_path.insert(0, Interrupt())
    sys.argv = ["adaspark", *{args!r}]
    from adaspark_cli.cli.app import main
    main()
    """
)


@pytest.fixture
def env(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("ADASPARK_DEBUG", None)
    env.pop("ADASPARK_MODEL", None)
    return env


def adaspark(*args, env, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaspark_cli.cli.app", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


def probe(args, env) -> tuple[subprocess.CompletedProcess, list[str]]:
    res = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, args=[str(a) for a in args])], env=env,
                         capture_output=True, text=True, timeout=120)
    head, _, loaded = res.stderr.rpartition("\nLOADED ")
    res.stderr = head
    return res, json.loads(loaded)


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        pytest.param(["--help"], 0, "Commands:", id="help"),
        pytest.param(["-h"], 0, "Commands:", id="h"),
        pytest.param(["--version"], 0, "adaspark ", id="version"),
        pytest.param(["ask", "-h"], 0, "--max-frames", id="ask-h"),
        pytest.param(["convert", "--help"], 0, "--target-reduction", id="convert-help"),
        pytest.param(["ask"], 2, "Missing argument 'VIDEO'", id="missing-argument"),
        pytest.param(["asks"], 2, "No such command", id="typo"),
        pytest.param(["ask", "clip.mp4", "q?", "--fps", "x"], 2, "--fps", id="bad-type"),
        pytest.param(["ask", "clip.mp4", "  "], 2, "QUESTION is empty", id="empty-question"),
        pytest.param(["ask", "clip.mp4", "q?", "--cube", "1000x1000x1000"], 2, "at most 64", id="huge-cube"),
        pytest.param(["profile", "clip.mp4", "--repeats", "0"], 2, "--repeats", id="profile-repeats"),
        pytest.param(["batch", "-h"], 0, "--out", id="batch-h"),
        pytest.param(["batch", "clips/", "--out", "answers.jsonl"], 2, "no question for the videos", id="batch-no-q"),
    ],
)
def test_help_version_and_usage_errors_load_no_torch(env, args, code, fragment):
    res, loaded = probe(args, env)
    assert res.returncode == code, res.stderr
    assert fragment in (res.stdout if code == 0 else res.stderr)
    assert loaded == [], f"{args} loaded {loaded}"


def test_python_m_runs_the_cli(env):
    res = adaspark("--version", env=env)
    assert res.returncode == 0 and res.stdout.startswith("adaspark ")


def test_closed_stdout_is_one_line(env):
    res = subprocess.run(["bash", "-c", 'exec "$@" >&-', "-", sys.executable, "-m", "adaspark_cli.cli.app", "--help"],
                         env=env, capture_output=False, stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip() == ("error: stdout is closed; adaspark writes its answers and JSON there: redirect it "
                                  "to a file or /dev/null instead of closing it")


def test_ctrl_c_while_torch_loads_is_one_line(env, clip):
    args = ["ask", str(clip), "q?"]
    res = subprocess.run([sys.executable, "-c", INTERRUPT_AT_TORCH.format(args=args)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 130 and res.stderr == "interrupted\n" and res.stdout == ""


def test_ctrl_c_while_the_app_loads_is_one_line(env):
    # before any command: while typer loads, outside every command's boundary
    code = INTERRUPT_AT_TORCH.replace('name == "torch"', 'name == "typer"').format(args=["--help"])
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 130 and res.stderr == "interrupted\n"


def ask_args(clip, tiny_checkpoint, *extra):
    return ["ask", clip, "what color?", "how many?", "--model", tiny_checkpoint, "--dense", "--max-frames", "2",
            "--max-new-tokens", "2", *extra]


def test_broken_pipe_exits_141_quietly(env, clip, tiny_checkpoint):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first answer, as with `| head -c1`
    try:
        proc = subprocess.run([sys.executable, "-m", "adaspark_cli.cli.app", *map(str, ask_args(clip, tiny_checkpoint))],
                              env=env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    for word in ("error", "Error", "Traceback", "Exception ignored", "BrokenPipe"):
        assert word not in proc.stderr, proc.stderr


def test_full_disk_on_stdout_is_one_line(env, clip, tiny_checkpoint):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "adaspark_cli.cli.app",
                               *map(str, ask_args(clip, tiny_checkpoint, "--json", "-q"))],
                              env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == ("error: cannot write to stdout: no space left on the disk or device it goes to; free some "
                           "space or redirect it elsewhere\n")


def test_sigint_at_any_moment_gives_one_line_and_130(env, clip, tiny_checkpoint):
    # -i waits on stdin once the video is prefilled, so the signal finds it loading the app, importing torch,
    # loading the model, prefilling or waiting
    for delay in (0.2, 0.8, 5.0):
        proc = subprocess.Popen([sys.executable, "-m", "adaspark_cli.cli.app", "ask", str(clip), "--model",
                                 str(tiny_checkpoint), "-i", "-q", "--max-frames", "2"], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (delay, err)
        assert err.strip().splitlines()[-1:] == ["interrupted"] and "Traceback" not in err, (delay, err)


def test_ctrl_c_during_shutdown_keeps_the_exit_code(env):
    # a Ctrl-C while atexit handlers run (torch's) must neither print a traceback nor change the code; the
    # handler is registered as a library's would be, while main imports it
    code = textwrap.dedent(
        """
        import atexit, os, signal, sys, time
        class RegisterAtImport:
            def find_spec(self, name, path=None, target=None):
                if name == "typer":
                    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))
        sys.meta_path.insert(0, RegisterAtImport())
        sys.argv = ["adaspark", "--version"]
        from adaspark_cli.cli.app import main
        main()
        """
    )
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("adaspark ") and res.stderr == "", res.stderr
    assert time.monotonic() - started < 5  # it ended at the signal, not after the handler's sleep


def test_ctrl_c_after_convert_finished_exits_0(env, tiny_checkpoint, tmp_path):
    # the case: a Ctrl-C right after convert finishes, while the process shuts down (freeing torch
    # takes about a second), exited 130 with a complete OUT, or 0 with an atexit traceback, or died of SIGINT
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "adaspark_cli.cli.app", "convert", str(tiny_checkpoint), str(out),
                             "--top-p", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    note = proc.stderr.readline()  # its last word: the command is done
    assert note.startswith(f"wrote {out}"), note
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert stdout.strip() == str(out) and err == "", err
    assert json.loads((out / "config.json").read_text())["adaspark"]["attn_top_p"] == 0.5
