"""Many videos, one model load per replica: the runners of `adaspark batch`.

- `answer_videos`: one replica (one loaded model) over an iterable of jobs, the next video opened in a
  background thread while the current one is answered.
- `run_local`: that, in this process; `run_workers`: one replica per worker process (spawn), jobs from
  a shared queue, results back to the parent; `run_ray`: the same with Ray actors (the `ray` extra).

The jobs and the answers file are in adaspark_cli/jobs.py. The library never imports Typer or Rich;
the CLI (cli/batch.py) writes the records, renders progress and the summary.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdasparkError
from ..jobs import VideoJob, VideoOutcome

PREFETCH = 1  # videos opened ahead of the one being answered: enough to hide opening, little memory


# ------------------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class ModelSettings:
    """What a replica needs to load the model and answer: picklable, for worker processes and Ray actors."""

    model: str | None
    device: str = "auto"
    overrides: dict[str, Any] = field(default_factory=dict)
    dense: bool = False
    kernel: str = "auto"
    decoder: str = "auto"
    max_new_tokens: int = 128
    threads: int | None = None  # torch CPU threads in this replica (workers share the cores)
    device_map: Any = None  # a placement.DeviceMapSpec: this one replica spread over the visible devices


class Replica:
    """One loaded model answering one video at a time, exactly as `adaspark ask --json` does."""

    def __init__(self, settings: ModelSettings) -> None:
        import torch

        from .load import load_video_qa

        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.loaded = load_video_qa(settings.model, device=settings.device, overrides=settings.overrides,
                                    dense=settings.dense, kernel=settings.kernel, device_map=settings.device_map)

    def open(self, job: VideoJob) -> Any:
        """The CPU part: probe and scan (pipelined reader) or decode (one-shot reader) the video."""
        from ..video.stream import open_video

        return open_video(job.path, fps=job.fps, max_frames=job.max_frames, decoder=self.settings.decoder)

    def answer(self, job: VideoJob, source: Any) -> list[dict[str, Any]]:
        """Prepare and prefill the video once, then answer every question on its cache."""
        qa = self.loaded.qa
        prompt = qa.prepare_video(source, max_pixels=job.max_pixels)
        prefix = qa.prefill_video(prompt)
        answers = []
        for question in job.questions:
            stream = qa.answer(prefix, question, max_new_tokens=self.settings.max_new_tokens)
            for _ in stream:
                pass
            answers.append(stream.result.to_json())
        return answers

    def run(self, job: VideoJob) -> VideoOutcome:
        """Open and answer one job, with no prefetch (Ray actors take one job per call)."""
        start = time.perf_counter()
        try:
            return _answered(self, job, self.open(job), start)
        except Exception as exc:  # noqa: BLE001 - one video's failure is recorded; the run goes on
            return VideoOutcome(job, error=one_line(exc), seconds=time.perf_counter() - start)


def one_line(exc: BaseException) -> str:
    """An error as the record's one line: the library's own message, else its type and first line."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, AdasparkError) else f"{type(exc).__name__}: {text}"


def _answered(replica: Replica, job: VideoJob, source: Any, start: float) -> VideoOutcome:
    try:
        answers = replica.answer(job, source)
    except Exception as exc:  # noqa: BLE001 - e.g. damage found while decoding: this video only
        return VideoOutcome(job, error=one_line(exc), seconds=time.perf_counter() - start)
    return VideoOutcome(job, answers=answers, seconds=time.perf_counter() - start)


@dataclass
class _Opened:
    job: VideoJob
    source: Any = None
    error: str | None = None
    started: float = 0.0


def answer_videos(replica: Replica, jobs: Iterable[VideoJob]) -> Iterator[VideoOutcome]:
    """Each job's outcome, in order. A background thread opens the next video (the video readers' CPU
    work) while this thread runs the model on the current one; a video that cannot be opened becomes
    an outcome with its error, and the run goes on."""
    ready: queue.Queue[_Opened | None] = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()
    failure: list[BaseException] = []

    def opener() -> None:
        try:
            for job in jobs:
                item = _Opened(job, started=time.perf_counter())
                try:
                    item.source = replica.open(job)
                except Exception as exc:  # noqa: BLE001 - recorded for this video
                    item.error = one_line(exc)
                if not _put(ready, item, stop):
                    return
        except BaseException as exc:  # the job source itself failed (a worker's queue): re-raised below
            failure.append(exc)
        _put(ready, None, stop)

    thread = threading.Thread(target=opener, name="adaspark-batch-open", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if item.error is not None:
                yield VideoOutcome(item.job, error=item.error, seconds=time.perf_counter() - item.started)
            else:
                yield _answered(replica, item.job, item.source, item.started)
        if failure:
            raise failure[0]
    finally:
        stop.set()  # the consumer stopped early (Ctrl-C, an error): let the opener end


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_local(settings: ModelSettings, jobs: list[VideoJob], on_loaded: Callable[[Replica], None] | None = None
              ) -> Iterator[VideoOutcome]:
    """One replica in this process: load the model once, then every job's outcome as it finishes."""
    replica = Replica(settings)
    if on_loaded is not None:
        on_loaded(replica)
    yield from answer_videos(replica, jobs)


# ------------------------------------------------------------------------------- worker processes


def _worker_main(settings: ModelSettings, conn: Any) -> None:
    """A worker process: load a replica, then answer the jobs received on `conn` until a None, sending
    ("ready",), then ("done", record dict, seconds) per job; ("failed", message) if the model cannot load."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle: it stops the workers
    try:
        replica = Replica(settings)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        conn.send(("failed", one_line(exc)))
        return
    conn.send(("ready",))
    for outcome in answer_videos(replica, iter(conn.recv, None)):
        conn.send(("done", outcome.record(), outcome.seconds))


@dataclass
class _Worker:
    device: str
    process: Any
    conn: Any
    held: list[VideoJob] = field(default_factory=list)  # sent, not yet answered, oldest first


def run_workers(settings: ModelSettings, jobs: list[VideoJob], devices: list[str],
                on_loaded: Callable[[int], None] | None = None) -> Iterator[VideoOutcome]:
    """One replica per device, each in its own spawned process, fed from one queue of jobs here; every
    outcome comes back here (the parent alone writes the answers file). Each worker holds at most
    PREFETCH + 1 jobs (the one it answers, the one it opens), over its own pipe: no lock is shared, so
    a worker killed at any moment cannot block the others. A worker that dies fails the videos it
    held; the others go on. A model that cannot load stops the run with its error."""
    import multiprocessing
    from collections import deque
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    workers: list[_Worker] = []
    for device in devices:
        parent_end, child_end = ctx.Pipe()
        worker_settings = ModelSettings(**{**settings.__dict__, "device": device, "threads": threads})
        process = ctx.Process(target=_worker_main, args=(worker_settings, child_end), daemon=True)
        process.start()
        child_end.close()
        workers.append(_Worker(device, process, parent_end))
    queue_ = deque(jobs)
    alive = list(workers)
    ready = 0
    try:
        while alive and (queue_ or any(w.held for w in alive)):
            by_handle = {w.conn: w for w in alive} | {w.process.sentinel: w for w in alive}
            for handle in wait(list(by_handle)):
                worker = by_handle[handle]
                if worker not in alive:
                    continue
                message = _receive(worker)
                if message is None:  # the process ended (or its pipe broke): its videos fail
                    alive.remove(worker)
                    worker.process.join(timeout=5)
                    for job in worker.held:
                        yield VideoOutcome(job, error=f"the worker on {worker.device} exited (code "
                                           f"{worker.process.exitcode}) while answering this video; rerun with "
                                           "--retry-failed")
                    worker.held.clear()
                    continue
                if message[0] == "failed":
                    raise AdasparkError(message[1])
                if message[0] == "ready":
                    ready += 1
                    if on_loaded is not None:
                        on_loaded(ready)
                elif message[0] == "done":
                    record, seconds = message[1], message[2]
                    job = next(j for j in worker.held if j.id == record["id"])
                    worker.held.remove(job)
                    yield VideoOutcome(job, answers=record["answers"], error=record["error"], seconds=seconds)
                _feed(worker, queue_)
        if queue_:
            raise AdasparkError(f"every worker exited with {len(queue_)} video(s) left; rerun the same command to "
                                "resume")
    finally:
        _stop(workers)


def _receive(worker: _Worker) -> Any:
    """The worker's next message, or None once its process has ended and nothing is left to read."""
    try:
        if worker.conn.poll():
            return worker.conn.recv()
    except (EOFError, OSError):
        return None
    except Exception:  # noqa: BLE001 - a message cut short (killed mid-send, unpickling fails): the worker is lost
        worker.process.kill()
        return None
    return None if not worker.process.is_alive() else ("idle",)


def _feed(worker: _Worker, jobs: Any) -> None:
    """Top the worker up to PREFETCH + 1 jobs: one to answer, the next to open meanwhile."""
    while jobs and len(worker.held) < PREFETCH + 1:
        job = jobs.popleft()
        try:
            worker.conn.send(job)
        except OSError:  # it died just now: the next wait() sees its sentinel
            jobs.appendleft(job)
            return
        worker.held.append(job)


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.conn.send(None)
        except OSError:
            pass
    for worker in workers:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join()
        worker.conn.close()


# ----------------------------------------------------------------------------------------------- Ray

RAY_INSTALL = "pip install 'adaspark-cli[ray]'"
RAY_RETRIES = 2  # restarts of a dead actor, and retries of the video it held


def import_ray() -> Any:
    """Ray, or a one-line AdasparkError with the install hint."""
    try:
        import ray
    except ImportError:
        raise AdasparkError(f"--ray needs Ray, which is not installed; install it with {RAY_INSTALL}") from None
    return ray


def run_ray(settings: ModelSettings, jobs: list[VideoJob], *, address: str, replicas: int | None,
            cpu_workers: bool = False, on_loaded: Callable[[int], None] | None = None) -> Iterator[VideoOutcome]:
    """The jobs on Ray actors, one replica each (a GPU each, unless `cpu_workers`), every outcome back
    here. A dead actor is restarted and its video retried (RAY_RETRIES); past that the video fails and
    the run goes on. Address "local": Ray starts a cluster on this machine."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=replicas if (cpu_workers and address == "local") else None,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - an unreachable address, a cluster that cannot start
            raise AdasparkError(f"cannot start or reach the Ray cluster{f' at {address}' if address else ''}: "
                                f"{one_line(exc)}") from None
    gpus = 0 if cpu_workers else int(ray.cluster_resources().get("GPU", 0))
    count = replicas or gpus or 1
    if not cpu_workers and gpus == 0:
        raise AdasparkError("the Ray cluster has no GPU; --ray places one replica per GPU: add GPU nodes")
    remote = ray.remote(num_gpus=0 if cpu_workers else 1, num_cpus=1, max_restarts=RAY_RETRIES,
                        max_task_retries=RAY_RETRIES)(_RayReplica)
    device = "cpu" if cpu_workers else "cuda"
    actors = [remote.remote(ModelSettings(**{**settings.__dict__, "device": device, "threads": 1 if cpu_workers
                                             else settings.threads})) for _ in range(count)]
    try:
        for n, ref in enumerate(ray.get([a.ready.remote() for a in actors]), start=1):
            if ref is not None:
                raise AdasparkError(ref)
            if on_loaded is not None:
                on_loaded(n)
        yield from _ray_dispatch(ray, actors, jobs)
    finally:
        for actor in actors:
            ray.kill(actor)


def _ray_dispatch(ray: Any, actors: list[Any], jobs: list[VideoJob]) -> Iterator[VideoOutcome]:
    """Keep every actor busy with one job; outcomes in the order they finish."""
    pending = list(reversed(jobs))
    running: dict[Any, tuple[Any, VideoJob]] = {}
    for actor in actors:
        if pending:
            job = pending.pop()
            running[actor.run.remote(job)] = (actor, job)
    while running:
        finished, _ = ray.wait(list(running), num_returns=1)
        ref = finished[0]
        actor, job = running.pop(ref)
        try:
            outcome = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the actor died past its retries: this video fails
            outcome = VideoOutcome(job, error=f"the Ray worker failed on this video: {one_line(exc)}")
        yield outcome
        if pending:
            job = pending.pop()
            running[actor.run.remote(job)] = (actor, job)


class _RayReplica:
    """The Ray actor: one replica; `ready` reports a model that cannot load (None when loaded)."""

    def __init__(self, settings: ModelSettings) -> None:
        self.error: str | None = None
        try:
            self.replica: Replica | None = Replica(settings)
        except Exception as exc:  # noqa: BLE001 - reported by ready(), so the driver stops with the message
            self.replica, self.error = None, one_line(exc)

    def ready(self) -> str | None:
        return self.error

    def run(self, job: VideoJob) -> VideoOutcome:
        assert self.replica is not None  # the driver stops when ready() reports an error
        return self.replica.run(job)
