"""`adaspark batch` end to end on the tiny model: manifests good and bad, resume after SIGKILL, --force,
folder + -q input, the answers equal to `ask --json`, worker processes and Ray actors (on the CPU)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from video_factory import write_garbage, write_text, write_video

from adaspark_cli.cli.app import app
from adaspark_cli.jobs import AnswersFile

SRC = Path(__file__).resolve().parents[1] / "src"
RECORD_KEYS = {"id", "video", "answers", "error"}
# what differs between two runs of the same question: wall-clock times
CLOCK_KEYS = {"prefill_seconds", "video_prefill_seconds", "decode_seconds", "timing"}
FAST = ["--max-frames", "4", "--max-new-tokens", "3", "--cube", "1x2x2", "--top-p", "0.5"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A folder with three good clips (different content lengths), a garbage .mp4 and a text file."""
    folder = tmp_path_factory.mktemp("clips")
    for i, n in enumerate((24, 36, 48)):
        write_video(folder / f"clip{i}.mp4", n_frames=n, fps=12.0, width=112, height=112)
    write_garbage(folder / "broken.mp4")
    write_text(folder / "notes.txt")
    return folder


def manifest(folder: Path, rows: list[dict], name: str = "videos.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def batch(runner, *args):
    return runner.invoke(app, ["batch", *map(str, args)], catch_exceptions=False)


def records(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")  # never a torn line
    return [json.loads(line) for line in text.splitlines()]


def without_clocks(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in CLOCK_KEYS}


def good_rows(videos: Path) -> list[dict]:
    return [{"video": str(videos / f"clip{i}.mp4"), "questions": ["what color?", "how many?"]} for i in range(3)]


def test_manifest_with_good_and_bad_videos(runner, videos, tiny_checkpoint, tmp_path):
    rows = [
        {"id": "a", "video": str(videos / "clip0.mp4"), "questions": ["what color?", "how many?"]},
        {"id": "broken", "video": str(videos / "broken.mp4"), "questions": ["what color?"]},
        {"id": "missing", "video": "no/such/clip.mp4", "questions": ["what color?"]},
        {"id": "c", "video": str(videos / "clip2.mp4"), "questions": ["what color?"], "max_frames": 6},
    ]
    out = tmp_path / "answers.jsonl"
    res = batch(runner, manifest(tmp_path, rows), "--out", out, "--model", tiny_checkpoint, *FAST)
    assert res.exit_code == 1, res.output  # some videos failed; the others are answered
    assert res.stdout == ""
    got = records(out)
    assert [r["id"] for r in got] == ["a", "broken", "missing", "c"]  # one replica: manifest order
    assert all(set(r) == RECORD_KEYS for r in got)
    a, broken, missing, c = got
    assert a["error"] is None and [x["question"] for x in a["answers"]] == ["what color?", "how many?"]
    assert a["answers"][1]["video_prefill_reused"] and a["answers"][0]["frames"] == 4
    assert c["error"] is None and c["answers"][0]["frames"] == 6  # the per-video option won over --max-frames
    for bad, fragment in ((broken, "broken.mp4"), (missing, "no/such/clip.mp4")):
        assert bad["answers"] == [] and fragment in bad["error"] and "\n" not in bad["error"]
    assert "2 answered, 2 failed" in res.stderr and "Traceback" not in res.output
    assert f"error: {rows[1]['video']}: " in res.stderr  # each failure is also one line on stderr


def test_answers_equal_ask_json(runner, videos, tiny_checkpoint, tmp_path):
    clip = videos / "clip1.mp4"
    out = tmp_path / "answers.jsonl"
    res = batch(runner, manifest(tmp_path, [{"video": str(clip), "questions": ["what color?", "how many?"]}]),
                "--out", out, "--model", tiny_checkpoint, *FAST)
    assert res.exit_code == 0, res.output
    asked = runner.invoke(app, ["ask", str(clip), "what color?", "how many?", "--json", "--model",
                                str(tiny_checkpoint), *FAST], catch_exceptions=False)
    assert asked.exit_code == 0, asked.output
    expected = [json.loads(line) for line in asked.stdout.splitlines()]
    (record,) = records(out)
    assert record["id"] == record["video"] == str(clip)  # the default id is the path as written
    assert [set(a) for a in record["answers"]] == [set(e) for e in expected]
    assert [without_clocks(a) for a in record["answers"]] == [without_clocks(e) for e in expected]


def test_folder_and_glob_with_questions(runner, videos, tiny_checkpoint, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(2):
        (good / f"clip{i}.mp4").write_bytes((videos / f"clip{i}.mp4").read_bytes())
    (good / "notes.txt").write_text("not a video\n")  # no video suffix: not picked up
    out = tmp_path / "folder.jsonl"
    res = batch(runner, good, "-q", "what color?", "-q", "how many?", "--out", out, "--model", tiny_checkpoint, *FAST)
    assert res.exit_code == 0, res.output
    got = records(out)
    assert [r["id"] for r in got] == [str(good / "clip0.mp4"), str(good / "clip1.mp4")]
    assert all(r["error"] is None and [a["question"] for a in r["answers"]] == ["what color?", "how many?"] for r in got)
    out2 = tmp_path / "glob.jsonl"
    res = batch(runner, str(good / "*1.mp4"), "-q", "what color?", "--out", out2, "--model", tiny_checkpoint, *FAST)
    assert res.exit_code == 0, res.output
    assert [r["id"] for r in records(out2)] == [str(good / "clip1.mp4")]


def test_resume_skips_done_and_force_starts_over(runner, videos, tiny_checkpoint, tmp_path):
    path = manifest(tmp_path, good_rows(videos)[:2])
    out = tmp_path / "answers.jsonl"
    first = batch(runner, path, "--out", out, "--model", tiny_checkpoint, *FAST)
    assert first.exit_code == 0, first.output
    before = out.read_bytes()
    again = batch(runner, path, "--out", out, "--model", tiny_checkpoint, *FAST)
    assert again.exit_code == 0, again.output
    assert out.read_bytes() == before  # nothing redone, nothing rewritten
    assert "2 of 2 videos already there are skipped" in again.stderr and "0 answered" in again.stderr
    more = manifest(tmp_path, good_rows(videos), name="more.jsonl")  # one video added to the list
    grown = batch(runner, more, "--out", out, "--model", tiny_checkpoint, *FAST)
    assert grown.exit_code == 0, grown.output
    assert out.read_bytes().startswith(before) and len(records(out)) == 3 and "1 answered" in grown.stderr
    forced = batch(runner, path, "--out", out, "--model", tiny_checkpoint, "--force", *FAST)
    assert forced.exit_code == 0, forced.output
    assert f"--force: {out} is replaced" in forced.stderr
    assert [r["id"] for r in records(out)] == [r["video"] for r in good_rows(videos)[:2]]  # only this run's


def test_torn_last_line_is_dropped_and_redone(runner, videos, tiny_checkpoint, tmp_path):
    path = manifest(tmp_path, good_rows(videos)[:2])
    out = tmp_path / "answers.jsonl"
    assert batch(runner, path, "--out", out, "--model", tiny_checkpoint, *FAST).exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of writing line 2
    res = batch(runner, path, "--out", out, "--model", tiny_checkpoint, *FAST)
    assert res.exit_code == 0, res.output
    assert "last line was cut short" in res.stderr and "1 answered" in res.stderr
    got = records(out)
    assert out.read_bytes().startswith(lines[0]) and [r["id"] for r in got] == [r["video"] for r in good_rows(videos)[:2]]


def test_resume_after_sigkill_answers_every_video_once(videos, tiny_checkpoint, tmp_path):
    rows = [{"id": f"v{i}", "video": str(videos / f"clip{i % 3}.mp4"), "questions": ["what color?"]} for i in range(8)]
    path = manifest(tmp_path, rows)
    out = tmp_path / "answers.jsonl"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    args = [sys.executable, "-m", "adaspark_cli.cli.app", "batch", str(path), "--out", str(out), "--model",
            str(tiny_checkpoint), "--max-frames", "4", "--max-new-tokens", "24"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_before = out.read_bytes()
    killed_after = len(records(out))
    assert 2 <= killed_after < len(rows), "the kill came too late to interrupt the run"
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes().startswith(done_before)  # the records written before the kill are kept as they were
    got = records(out)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows)  # every video once
    assert all(r["error"] is None and len(r["answers"]) == 1 for r in got)
    assert f"{killed_after} of {len(rows)} videos already there are skipped" in res.stderr


def test_progress_absent_when_piped_and_json_summary(runner, videos, tiny_checkpoint, tmp_path):
    out = tmp_path / "answers.jsonl"
    res = batch(runner, manifest(tmp_path, good_rows(videos)[:2]), "--out", out, "--model", tiny_checkpoint,
                "--json", *FAST)
    assert res.exit_code == 0, res.output
    assert res.stdout == ""  # answers go to --out only
    assert "\r" not in res.stderr and "\x1b[" not in res.stderr and "ETA" not in res.stderr
    summary = json.loads(res.stderr.strip().splitlines()[-1])
    assert summary["answered"] == 2 and summary["failed"] == summary["skipped"] == 0 and summary["total"] == 2
    assert summary["mean_first_token_s"] > 0 and 0 < summary["mean_flops_reduction"] < 1
    assert summary["videos_per_minute"] > 0 and summary["out"] == str(out)


def test_progress_bar_on_a_terminal(videos, tiny_checkpoint, tmp_path):
    """A real pseudo-terminal as stderr: the bar (videos done / total, rate, ETA) is drawn there."""
    import pty

    out = tmp_path / "answers.jsonl"
    env = dict(os.environ, PYTHONPATH=str(SRC), COLUMNS="160", TERM="xterm")
    main, child = pty.openpty()
    args = [sys.executable, "-m", "adaspark_cli.cli.app", "batch", str(manifest(tmp_path, good_rows(videos))),
            "--out", str(out), "--model", str(tiny_checkpoint), "--max-frames", "4", "--max-new-tokens", "16"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=child)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))  # colours, cursor moves
    assert "3/3 videos" in text and "/min" in text and "ETA" in text
    assert "batch: 3 answered" in text


def test_stdout_output_with_dash(runner, videos, tiny_checkpoint, tmp_path):
    res = batch(runner, manifest(tmp_path, good_rows(videos)[:1]), "--out", "-", "--model", tiny_checkpoint, *FAST)
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert set(record) == RECORD_KEYS and record["error"] is None


def run_answers(runner, path, out, tiny_checkpoint, *extra) -> dict[str, list[dict]]:
    res = batch(runner, path, "--out", out, "--model", tiny_checkpoint, *FAST, *extra)
    assert res.exit_code == 1, res.output  # the broken video
    return {r["id"]: (r["error"], [without_clocks(a) for a in r["answers"]]) for r in records(out)}


def test_two_cpu_worker_processes_give_the_single_process_answers(runner, videos, tiny_checkpoint, tmp_path):
    rows = good_rows(videos) + [{"video": str(videos / "broken.mp4"), "questions": ["what color?"]}]
    path = manifest(tmp_path, rows)
    single = run_answers(runner, path, tmp_path / "one.jsonl", tiny_checkpoint)
    workers = run_answers(runner, path, tmp_path / "two.jsonl", tiny_checkpoint, "--cpu-workers", "2")
    assert set(single) == {r["video"] for r in rows}
    assert workers == single


def test_ray_local_cluster_of_two_cpu_workers_gives_the_single_process_answers(runner, videos, tiny_checkpoint,
                                                                             tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'adaspark-cli[ray]')")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    rows = good_rows(videos) + [{"video": str(videos / "broken.mp4"), "questions": ["what color?"]}]
    path = manifest(tmp_path, rows)
    single = run_answers(runner, path, tmp_path / "one.jsonl", tiny_checkpoint)
    try:
        on_ray = run_answers(runner, path, tmp_path / "ray.jsonl", tiny_checkpoint, "--ray", "local",
                             "--cpu-workers", "2")
    finally:
        ray.shutdown()
    assert on_ray == single


def test_missing_ray_is_one_line_with_the_install_hint(runner, videos, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "answers.jsonl"
    res = batch(runner, manifest(tmp_path, good_rows(videos)[:1]), "--out", out, "--model", tiny_checkpoint,
                "--ray", "local", *FAST)
    assert res.exit_code == 1
    assert res.stderr.strip() == ("error: --ray needs Ray, which is not installed; install it with "
                                  "pip install 'adaspark-cli[ray]'")
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(
    "lines,fragment",
    [
        pytest.param(['{"video": "a.mp4", "questions": ["q?"]}', "{not json"], "line 2 is not JSON", id="not-json"),
        pytest.param(['{"questions": ["q?"]}'], "line 1: \"video\" is missing", id="missing-video"),
        pytest.param(['{"video": "a.mp4", "questions": "q?"}'], "line 1: \"questions\" must be a non-empty list",
                     id="questions-not-a-list"),
        pytest.param(['{"video": "a.mp4", "questions": []}'], "line 1: \"questions\" must be a non-empty list",
                     id="no-questions"),
        pytest.param(['{"id": "x", "video": "a.mp4", "questions": ["q?"]}', "",
                      '{"id": "x", "video": "b.mp4", "questions": ["q?"]}'],
                     "line 3: id 'x' is already used on line 1", id="duplicate-id"),
        pytest.param(['{"video": "a.mp4", "questions": ["q?"]}', '{"video": "a.mp4", "questions": ["r?"]}'],
                     "line 2: id 'a.mp4' is already used on line 1", id="duplicate-default-id"),
        pytest.param(['{"video": "a.mp4", "questions": ["q?"], "fsp": 2}'], "line 1: unknown key 'fsp'", id="typo"),
        pytest.param(['{"video": "a.mp4", "questions": ["q?"], "fps": 0}'], "line 1: \"fps\" must be a number > 0",
                     id="bad-fps"),
        pytest.param(['{"video": "a.mp4", "questions": ["q?"], "max_frames": 2.5}'],
                     "line 1: \"max_frames\" must be an integer >= 1", id="bad-max-frames"),
        pytest.param(['{"video": "a.mp4", "questions": ["q?"], "max_pixels": 10}'],
                     "line 1: \"max_pixels\" must be an integer >= 3136", id="bad-max-pixels"),
        pytest.param(['{"video": "a.mp4", "questions": ["  "]}'], "line 1: question 1 is empty", id="empty-question"),
        pytest.param(['[1, 2]'], "line 1 is not a JSON object", id="not-an-object"),
        pytest.param([""], "lists no videos", id="empty"),
    ],
)
def test_bad_manifest_is_one_line_usage_error(runner, tmp_path, lines, fragment):
    path = tmp_path / "videos.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answers.jsonl"
    res = batch(runner, path, "--out", out)
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and fragment in res.stderr, res.stderr
    assert res.stderr.startswith("error: ") and not out.exists()


@pytest.mark.parametrize(
    "args,fragment",
    [
        pytest.param(["{m}", "--gpus", "2"], "--gpus 2 needs 2 CUDA GPUs but none is visible; drop --gpus", id="gpus"),
        pytest.param(["{m}", "--gpus", "2", "--device", "cpu"], "--device is cpu", id="gpus-cpu"),
        pytest.param(["{m}", "-q", "why?"], "drop -q or add them to the manifest", id="q-with-manifest"),
        pytest.param(["{d}"], "no question for the videos", id="folder-without-q"),
        pytest.param(["{d}/*.nothing", "-q", "why?"], "matches no files", id="empty-glob"),
        pytest.param(["{m}", "--out", "{m}"], "is the INPUT manifest itself", id="out-is-input"),
        pytest.param(["{m}", "--out", "{d}"], "is a folder", id="out-is-folder"),
        pytest.param(["{m}", "--out", "{d}/no/such.jsonl"], "does not exist; create it first", id="out-folder-missing"),
        pytest.param(["{m}", "--out", "-", "--force"], "drop --force", id="force-stdout"),
    ],
)
def test_bad_flags_are_usage_errors(runner, tmp_path, args, fragment):
    path = manifest(tmp_path, [{"video": "a.mp4", "questions": ["q?"]}])
    argv = [a.format(m=path, d=tmp_path) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "answers.jsonl")]
    res = batch(runner, *argv)
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and fragment in res.stderr, res.stderr


def test_answers_file_that_is_not_ours_is_refused(runner, tmp_path):
    path = manifest(tmp_path, [{"video": "a.mp4", "questions": ["q?"]}])
    out = tmp_path / "answers.jsonl"
    out.write_text("some notes\nthe user keeps here\n")
    res = batch(runner, path, "--out", out)
    assert res.exit_code == 1
    assert "line 1 is not an answers record" in res.stderr and "--force" in res.stderr
    assert out.read_text() == "some notes\nthe user keeps here\n"  # untouched


def test_answers_file_writes_nothing_before_the_first_record(tmp_path):
    out = tmp_path / "answers.jsonl"
    out.write_bytes(b'{"id": "a", "video": "a.mp4", "answers": [], "error": null}\n{"id": "b", "vid')
    answers = AnswersFile.open(out, force=True)
    assert out.read_bytes().startswith(b'{"id": "a"')  # --force replaces only once a new record is written
    answers.write({"id": "c", "video": "c.mp4", "answers": [], "error": None})
    answers.close()
    assert records(out) == [{"id": "c", "video": "c.mp4", "answers": [], "error": None}]


def test_bad_manifest_loads_no_torch(tmp_path):
    from test_cli_process import probe

    path = tmp_path / "videos.jsonl"
    path.write_text('{"video": "a.mp4", "questions": "q?"}\n')
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    res, loaded = probe(["batch", str(path), "--out", str(tmp_path / "answers.jsonl")], env)
    assert res.returncode == 2 and "line 1" in res.stderr
    assert loaded == [], f"a bad manifest loaded {loaded}"


def test_retry_failed_redoes_only_the_failed_videos(runner, videos, tiny_checkpoint, tmp_path):
    flaky = tmp_path / "flaky.mp4"
    write_garbage(flaky)  # e.g. a download still in progress on the first run
    rows = [{"id": "good", "video": str(videos / "clip0.mp4"), "questions": ["what color?"]},
            {"id": "flaky", "video": str(flaky), "questions": ["what color?"]}]
    path, out = manifest(tmp_path, rows), tmp_path / "answers.jsonl"
    assert batch(runner, path, "--out", out, "--model", tiny_checkpoint, *FAST).exit_code == 1
    good_line = out.read_bytes().splitlines(keepends=True)[0]
    flaky.write_bytes((videos / "clip1.mp4").read_bytes())  # the file is complete now
    plain = batch(runner, path, "--out", out, "--model", tiny_checkpoint, *FAST)
    assert plain.exit_code == 0 and "1 of them failed (--retry-failed redoes those)" in plain.stderr
    retried = batch(runner, path, "--out", out, "--model", tiny_checkpoint, "--retry-failed", *FAST)
    assert retried.exit_code == 0, retried.output
    assert "1 answered" in retried.stderr and "1 skipped" in retried.stderr
    got = records(out)
    assert out.read_bytes().startswith(good_line)  # the answered video is neither redone nor rewritten
    assert [r["id"] for r in got] == ["good", "flaky"] and all(r["error"] is None for r in got)
    assert not (tmp_path / "answers.jsonl.tmp").exists()


def test_ctrl_c_keeps_the_finished_videos_and_says_how_to_resume(videos, tiny_checkpoint, tmp_path):
    rows = [{"id": f"v{i}", "video": str(videos / f"clip{i % 3}.mp4"), "questions": ["what color?"]} for i in range(8)]
    out = tmp_path / "answers.jsonl"
    args = [sys.executable, "-m", "adaspark_cli.cli.app", "batch", str(manifest(tmp_path, rows)), "--out", str(out),
            "--model", str(tiny_checkpoint), "--max-frames", "4", "--max-new-tokens", "24", "--cpu-workers", "2"]
    proc = subprocess.Popen(args, env=dict(os.environ, PYTHONPATH=str(SRC)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # to the parent only; its workers are stopped by it
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    written = len(records(out))
    assert 1 <= written < len(rows), "the Ctrl-C came too late to interrupt the run"
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"interrupted; the {written} video(s) finished in this run are in "
                                               f"{out}: rerun the same command to resume")


def worker_pids(parent: int) -> list[int]:
    """The batch process's worker processes (multiprocessing's spawn children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_killed_worker_fails_only_its_videos(videos, tiny_checkpoint, tmp_path):
    rows = [{"id": f"v{i}", "video": str(videos / f"clip{i % 3}.mp4"), "questions": ["what color?"]} for i in range(16)]
    out = tmp_path / "answers.jsonl"
    args = [sys.executable, "-m", "adaspark_cli.cli.app", "batch", str(manifest(tmp_path, rows)), "--out", str(out),
            "--model", str(tiny_checkpoint), "--max-frames", "4", "--max-new-tokens", "64", "--cpu-workers", "2"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    victims = worker_pids(proc.pid)
    assert len(victims) == 2, victims
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert "internal error" not in stderr and "Traceback" not in stderr
    got = records(out)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows), stderr  # each once, answered or failed
    failed = [r for r in got if r["error"] is not None]
    # what the killed worker held: the video it answered and the one it opened; none when it was still loading
    # its model (the first record came from the other worker), which leaves the run to the survivor
    assert len(failed) <= 2 and proc.returncode == (1 if failed else 0), stderr
    assert all("exited (code -9) while answering this video; rerun with --retry-failed" in r["error"] for r in failed)
    again = subprocess.run(args + ["--retry-failed"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    got = records(out)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows) and all(r["error"] is None for r in got)


def ray_actor_pids() -> list[int]:
    """Processes of batch's Ray actors (Ray names them after the actor class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry / "cmdline").read_bytes().startswith(b"ray::_RayReplica"):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_ray_restarts_a_killed_actor_and_retries_its_video(videos, tiny_checkpoint, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'adaspark-cli[ray]')")
    rows = [{"id": f"v{i}", "video": str(videos / f"clip{i % 3}.mp4"), "questions": ["what color?"]} for i in range(8)]
    out = tmp_path / "answers.jsonl"
    args = [sys.executable, "-m", "adaspark_cli.cli.app", "batch", str(manifest(tmp_path, rows)), "--out", str(out),
            "--model", str(tiny_checkpoint), "--max-frames", "4", "--max-new-tokens", "24", "--cpu-workers", "2",
            "--ray", "local"]
    env = dict(os.environ, PYTHONPATH=str(SRC), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    victims = ray_actor_pids()
    assert victims, "no Ray actor process found"
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr  # the video the dead actor held was retried on its restarted replica
    got = records(out)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows) and all(r["error"] is None for r in got)
