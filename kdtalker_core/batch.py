"""Batch jobs: many photo + speech -> mp4 jobs, resumable, on local worker processes or a Ray cluster.

A jobs file is JSONL (one JSON object a line) or CSV (a header row, then one job a row). Each job
has ``image``, ``audio`` (paths; relative ones are relative to the jobs file) and ``out`` (an mp4
name relative to the output folder), and optionally any :class:`~kdtalker_core.options.GenerateOptions`
field (``seed``, ``steps``, ``smoothing``, ``fps``, ``face_index``, ...; also the CLI spellings
``max_seconds`` and ``no_paste_back``), which override the batch's defaults. A job's number is its
line in the file, from 1.

How a batch survives anything:

- every video goes through :class:`~kdtalker_core.video.Mp4Writer` (written next to its final name,
  renamed when complete), so an ``out`` file that exists is a finished video;
- resume = a job whose ``out`` exists is not run again (status ``skipped``); the file is the truth,
  the report is not consulted (a batch killed between the rename and the report line loses nothing).
  Temporary ``.NAME.*.part.mp4`` files left by a killed batch are removed before the run starts;
- a job that fails (no face, bad audio, bad option, ...) is reported with a one-line error and the
  batch goes on; failed jobs are tried again by the next run;
- Ctrl-C stops every worker at its next chunk (or denoiser step): the jobs in progress leave no
  file and are simply not reported, so a rerun does them. A second Ctrl-C stops at once (still no
  partial file at any ``out`` name);
- the report (JSONL: ``job``, ``out``, ``status`` done|skipped|failed, ``error``, ``frames``,
  ``seconds``) is written and flushed as each job finishes; each run writes a fresh one.

Every job goes through :func:`_generate`, the one call of :func:`kdtalker_core.pipeline.run` (the
same call ``kdtalker generate`` makes), so a batch writes exactly the videos ``generate`` writes.
Inputs are read and checked by the driver (:func:`kdtalker_core.pipeline.read_inputs`) before they
reach a worker: bad photos and audio fail in seconds, and no model is loaded while there is nothing
to render. Each worker loads the models once and keeps the last few portraits (key: photo file +
face options), so a photo used by several jobs is prepared once per worker.

Backends: ``workers=1`` runs in this process; ``workers=N`` runs N spawned processes
(:class:`concurrent.futures.ProcessPoolExecutor`, one model copy each, CUDA devices round-robin);
``ray_address`` runs N Ray actors (one model copy each, one GPU each when the cluster has GPUs).
Checked inputs travel to workers pickled (processes) or through Ray's object store; with Ray, the
videos come back as bytes through the object store (``ray_outputs="bytes"``, works on any cluster)
or are written by the workers straight to ``out_dir`` (``ray_outputs="paths"``, needs a shared
filesystem).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import publish, temp_beside
from .batch_jobs import JOB_KEYS, Job, make_job, one_line, read_jobs
from .errors import InputError, KDTalkerError
from .options import DEFAULTS, MODEL_DEFAULTS, GenerateOptions, ModelOptions

__all__ = ["JOB_KEYS", "BatchSummary", "Job", "JobReport", "ProgressLine", "make_job", "read_jobs", "run"]

REPORT_NAME = "report.jsonl"
RAY_INSTALL_HINT = 'install Ray first: pip install "comfyui-kdtalker[ray]" (or: pip install ray)'
#: Portraits a worker keeps (jobs are grouped by photo, so a few suffice).
PORTRAIT_CACHE_SIZE = 2

# ----------------------------------------------------------------------------------- reports


@dataclass
class JobReport:
    """What happened to one job (one line of the report). ``input_error``: the failure was bad input
    (a :class:`~kdtalker_core.errors.KDTalkerError`, exit code 2) rather than anything else (1)."""

    job: int
    out: str | None
    status: str
    error: str | None = None
    frames: int | None = None
    seconds: float | None = None
    input_error: bool = False

    def to_json(self) -> dict[str, Any]:
        """The report line: job, out, status, error, frames, seconds."""
        return {"job": self.job, "out": self.out, "status": self.status, "error": self.error,
                "frames": self.frames, "seconds": None if self.seconds is None else round(self.seconds, 3)}


@dataclass
class BatchSummary:
    """Every job's report (in the order they finished) and whether the batch was interrupted."""

    reports: list[JobReport]
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.reports)

    @property
    def exit_code(self) -> int:
        """0 all done, 2 some failed on bad input only, 1 otherwise (other failures, interrupted)."""
        failed = [r for r in self.reports if r.status == "failed"]
        if self.interrupted or any(not r.input_error for r in failed):
            return 1
        return 2 if failed else 0


StageCallback = Callable[[int, str, int, int], None]
"""``on_stage(job, stage, done, total)``: a job's progress (the pipeline's stages)."""


# ----------------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _ModelSpec:
    """How a worker finds and loads the models (sent to every worker)."""

    models_dir: str | None
    options: ModelOptions


@dataclass
class _Task:
    """One checked job on its way to a worker: ``inputs`` a :class:`~kdtalker_core.pipeline.Inputs`;
    ``portrait_key`` identifies the photo file + face options; ``out`` the absolute output path, or
    None to get the video back as bytes."""

    number: int
    inputs: Any
    portrait_key: tuple
    out: str | None
    check_seconds: float


@dataclass
class _Outcome:
    """A worker's answer: frames written (or the error), seconds spent, the video bytes if asked."""

    number: int
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    input_error: bool = False
    interrupted: bool = False
    data: bytes | None = None


class _Stopped(Exception):
    """Raised from a stage callback to stop a job between chunks (the sink removes its file)."""


def _generate(models: Any, inputs: Any, portrait: Any, out: Path, on_stage: Callable[[str, int, int], None]) -> Any:
    """THE call into the pipeline: one checked job -> ``out`` (an mp4 that appears only when complete)."""
    from . import pipeline
    from .video import Mp4Writer

    return pipeline.run(models, inputs, on_stage=on_stage, sink=Mp4Writer(out), portrait=portrait)


class _Worker:
    """One model copy (loaded at the first job) and a few prepared portraits; runs one job at a time."""

    def __init__(self, spec: _ModelSpec, device: str | None = None, threads: int | None = None) -> None:
        self.spec = spec
        self.device = device or spec.options.device
        self.threads = threads
        self.stop_event: Any = threading.Event()
        self._models: Any = None
        self._portraits: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def models(self) -> Any:
        if self._models is None:
            import torch

            from . import pipeline, weights
            from .model_locations import default_models_dir

            if self.threads:
                torch.set_num_threads(self.threads)
            opts = self.spec.options
            paths = weights.find_model_files(self.spec.models_dir or default_models_dir())
            self._models = pipeline.load_models(paths=paths, device=self.device, precision=opts.precision,
                                                attention=opts.attention, use_ema=opts.use_ema)
        return self._models

    def portrait(self, models: Any, task: _Task) -> Any:
        """The cached portrait of this photo + face options, prepared on first use."""
        from . import pipeline

        if task.portrait_key in self._portraits:
            self._portraits.move_to_end(task.portrait_key)
            return self._portraits[task.portrait_key]
        inputs = task.inputs
        portrait = pipeline.portrait_of(models, inputs)
        self._portraits[task.portrait_key] = portrait
        while len(self._portraits) > PORTRAIT_CACHE_SIZE:
            self._portraits.popitem(last=False)
        return portrait

    def do(self, task: _Task, on_stage: StageCallback | None = None) -> _Outcome:
        """Run one job; its failures become the outcome's one-line error (the batch goes on). Models
        that do not load raise instead: no job could run."""

        def stage(name: str, done: int, total: int) -> None:
            if self.stop_event.is_set():
                raise _Stopped
            if on_stage is not None:
                on_stage(task.number, name, done, total)

        if self.stop_event.is_set():
            return _Outcome(task.number, interrupted=True)
        models = self.models()  # a model that does not load ends the batch (every job would fail)
        t0 = time.perf_counter()  # job time, without loading the models
        try:
            portrait = self.portrait(models, task)
            if task.out is not None:
                result = _generate(models, task.inputs, portrait, Path(task.out), stage)
                data = None
            else:
                with tempfile.TemporaryDirectory(prefix="kdtalker-batch-") as tmp:
                    out = Path(tmp) / "video.mp4"
                    result = _generate(models, task.inputs, portrait, out, stage)
                    data = out.read_bytes()
        except _Stopped:
            return _Outcome(task.number, interrupted=True)
        except Exception as exc:
            return _Outcome(task.number, seconds=time.perf_counter() - t0, error=one_line(exc),
                            input_error=isinstance(exc, KDTalkerError))
        return _Outcome(task.number, frames=result.num_frames, seconds=time.perf_counter() - t0, data=data)


# Process-pool workers: one _Worker per process, made by the pool's initializer.
_PROCESS_WORKER: _Worker | None = None
_PROCESS_QUEUE: Any = None


def _init_process(spec: _ModelSpec, devices: list[str], threads: int | None, counter: Any, stop: Any,
                  queue: Any) -> None:
    global _PROCESS_WORKER, _PROCESS_QUEUE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop (through ``stop``)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _PROCESS_WORKER = _Worker(spec, devices[index % len(devices)], threads)
    _PROCESS_WORKER.stop_event = stop
    _PROCESS_QUEUE = queue


def _process_do(task: _Task) -> _Outcome:
    def forward(number: int, stage: str, done: int, total: int) -> None:
        _PROCESS_QUEUE.put((number, stage, done, total))

    assert _PROCESS_WORKER is not None
    return _PROCESS_WORKER.do(task, forward)


# ----------------------------------------------------------------------------------- backends


class _Inline:
    """``workers=1``: jobs run in this process, one at a time (``submit`` returns a finished future)."""

    capacity = 1

    def __init__(self, spec: _ModelSpec, on_stage: StageCallback | None, stop: threading.Event) -> None:
        self.worker = _Worker(spec)
        self.worker.stop_event = stop
        self.on_stage = on_stage

    def submit(self, task: _Task) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(self.worker.do(task, self.on_stage))
        return future

    def release(self, future: cf.Future) -> None:
        pass

    def poll(self) -> None:
        pass

    def stop(self) -> None:
        self.worker.stop_event.set()

    def close(self) -> None:
        pass


def _local_devices(device: str) -> list[str]:
    """The devices workers take round-robin: ``auto`` -> every CUDA GPU (cuda:0, cuda:1, ...) or the
    CPU; anything else -> that one device."""
    if device != "auto":
        return [device]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]


class _Processes:
    """``workers=N``: N spawned processes, one model copy each (stage progress comes back on a queue)."""

    def __init__(self, spec: _ModelSpec, workers: int, on_stage: StageCallback | None) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        devices = _local_devices(spec.options.device)
        # CPU workers share the cores, unless $OMP_NUM_THREADS says otherwise (torch's results can
        # differ in the last bit with the thread count: same count, same bytes as ``generate``).
        on_cpu = all(d == "cpu" for d in devices)
        threads = max(1, (os.cpu_count() or 1) // workers) if on_cpu and "OMP_NUM_THREADS" not in os.environ else None
        self.stop_event = ctx.Event()
        self.queue = ctx.Queue()
        self.on_stage = on_stage
        self.capacity = 2 * workers
        self.pool = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_process,
            initargs=(spec, devices, threads, ctx.Value("i", 0), self.stop_event, self.queue))

    def submit(self, task: _Task) -> cf.Future:
        return self.pool.submit(_process_do, task)

    def release(self, future: cf.Future) -> None:
        pass

    def poll(self) -> None:
        import queue

        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if self.on_stage is not None:
                self.on_stage(*item)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.poll()


def import_ray() -> Any:
    """``import ray``, or an InputError saying how to install it (Ray is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


class _RayWorker(_Worker):
    """The Ray actor: a :class:`_Worker` whose ``stop`` can arrive while a job runs (2 threads)."""

    def ready(self) -> bool:
        return True

    def run_task(self, task: _Task) -> _Outcome:
        return self.do(task)

    def stop(self) -> None:
        self.stop_event.set()


class _Ray:
    """``ray_address``: N actors on a Ray cluster, one model copy each (one GPU each when there are
    GPUs; otherwise the cluster's CPUs shared out). A job goes to an idle actor; the inputs go
    through the object store; the video comes back as bytes unless ``ray_outputs == "paths"``."""

    def __init__(self, spec: _ModelSpec, workers: int | None, address: str) -> None:
        ray = import_ray()
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
            self.started = True
        resources = ray.cluster_resources()
        gpus = 0 if spec.options.device == "cpu" else int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        # No more actors than the cluster can hold at once (more would wait for resources forever).
        n = min(workers or max(gpus, 1), gpus or cpus)
        if gpus:
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": min(1, cpus // n)}
            device = "cuda"
        else:
            options = {"num_cpus": cpus // n}
            device = "cpu"
        actor_class = ray.remote(max_concurrency=2, **options)(_RayWorker)
        self.actors = [actor_class.remote(spec, device, options["num_cpus"] if not gpus else None)
                       for _ in range(n)]
        ray.get([a.ready.remote() for a in self.actors])
        self.idle = list(self.actors)
        self.busy: dict[cf.Future, Any] = {}
        self.capacity = n

    def submit(self, task: _Task) -> cf.Future:
        actor = self.idle.pop()
        future = actor.run_task.remote(self.ray.put(task)).future()
        self.busy[future] = actor
        return future

    def release(self, future: cf.Future) -> None:
        self.idle.append(self.busy.pop(future))

    def poll(self) -> None:
        pass

    def stop(self) -> None:
        for actor in self.actors:
            actor.stop.remote()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


# ----------------------------------------------------------------------------------- driver


class _Report:
    """Writes the report file line by line (flushed), calls ``on_job``, keeps the summary."""

    def __init__(self, path: Path, on_job: Callable[[JobReport], None] | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.on_job = on_job
        self.summary = BatchSummary([])

    def add(self, report: JobReport) -> None:
        self.summary.reports.append(report)
        self.file.write(json.dumps(report.to_json()) + "\n")
        self.file.flush()
        if self.on_job is not None:
            self.on_job(report)

    def close(self) -> None:
        self.file.close()


def _video_frames(path: Path) -> int | None:
    """Frames of a finished mp4 from its header (no decoding); None if unreadable."""
    try:
        import av

        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames) or None
    except Exception:
        return None


def _remove_stale_parts(out: Path) -> None:
    """Delete the temporary files a killed writer of ``out`` left (``atomic.temp_beside``'s
    ``.NAME.*.part.mp4``)."""
    if out.parent.is_dir():
        for part in out.parent.glob(f".{out.name}.*.part.mp4"):
            part.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` -> ``path`` through a temporary file in the same folder and a rename."""
    tmp = temp_beside(path, ".part.mp4")
    try:
        tmp.write_bytes(data)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _portrait_key(job: Job) -> tuple:
    """Same photo file (path, size, mtime) + same face options -> the same prepared portrait."""
    assert job.image is not None and job.options is not None
    image = job.image.resolve()
    try:
        stat = image.stat()
        identity: tuple = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        identity = ()
    opts = job.options
    return (str(image), *identity, opts.face_index, opts.face_order, opts.crop_mode)


class _StopOnSigint:
    """While active (main thread only): the first Ctrl-C sets ``event`` (stop between chunks), the
    second raises KeyboardInterrupt as usual."""

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event if event is not None else threading.Event()
        self._previous: Any = None

    def __enter__(self) -> _StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        sys.stderr.write("\nstopping after the current chunk (Ctrl-C again to stop at once)\n")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run(
    jobs: str | Path | Iterable[Job | Mapping[str, Any]],
    out_dir: str | Path,
    *,
    defaults: GenerateOptions = DEFAULTS,
    models_dir: str | Path | None = None,
    model_options: ModelOptions = MODEL_DEFAULTS,
    workers: int | None = None,
    ray_address: str | None = None,
    ray_outputs: str = "bytes",
    report: str | Path | None = None,
    on_job: Callable[[JobReport], None] | None = None,
    on_stage: StageCallback | None = None,
    stop: threading.Event | None = None,
) -> BatchSummary:
    """Run a batch; return every job's report (see the module docstring for the guarantees).

    ``jobs``: a jobs file, or :class:`Job` objects / mappings (numbered from 1, relative paths from
    the working directory). ``defaults``: the options of jobs that do not set them. ``models_dir``
    / ``model_options``: how each worker loads the models (``models_dir`` None: the CLI's default).
    ``workers``: processes (1 = this process; default 1) or, with ``ray_address``, Ray actors
    (default: one per cluster GPU, else 1). ``ray_address``: None = no Ray; ``""`` = ``ray.init()``'s
    default (``$RAY_ADDRESS`` or a new local cluster; an already initialised Ray is used as is);
    else a cluster address. ``ray_outputs``: ``"bytes"`` (videos come back through the object
    store) or ``"paths"`` (workers write into ``out_dir``, which they must see). ``report``: the
    JSONL report (default ``out_dir/report.jsonl``). ``on_job(report)`` as each job finishes;
    ``on_stage(job, stage, done, total)`` as jobs progress (not with Ray). ``stop``: set it to stop
    between chunks (Ctrl-C does the same when called from the main thread).
    """
    from . import pipeline

    out_dir = Path(out_dir)
    if ray_outputs not in ("bytes", "paths"):
        raise InputError(f"ray_outputs must be 'bytes' or 'paths', got {ray_outputs!r}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if ray_address is not None:
        import_ray()
    job_list = _job_list(jobs, defaults)
    spec = _ModelSpec(None if models_dir is None else str(models_dir), model_options)
    reporter = _Report(Path(report) if report is not None else out_dir / REPORT_NAME, on_job)

    pending: list[Job] = []
    for job in job_list:
        if job.error is not None:
            reporter.add(JobReport(job.number, job.out, "failed", job.error, input_error=True))
        elif (out_dir / str(job.out)).is_file():
            reporter.add(JobReport(job.number, job.out, "skipped", frames=_video_frames(out_dir / str(job.out))))
        else:
            pending.append(job)
    # Group jobs by photo (stable) so a worker's portrait cache serves consecutive jobs.
    first_seen: dict[tuple, int] = {}
    pending.sort(key=lambda j: first_seen.setdefault(_portrait_key(j), len(first_seen)))
    for job in pending:
        _remove_stale_parts(out_dir / str(job.out))

    def checked() -> Iterator[_Task]:
        """Read and check each pending job's inputs (no models); failures are reported here."""
        for job in pending:
            t0 = time.perf_counter()
            try:
                inputs = pipeline.read_inputs(job.image, job.audio, job.options)
            except Exception as exc:
                reporter.add(JobReport(job.number, job.out, "failed", one_line(exc),
                                       seconds=time.perf_counter() - t0,
                                       input_error=isinstance(exc, KDTalkerError)))
                continue
            target = (out_dir / str(job.out)).resolve()
            keep_path = ray_address is None or ray_outputs == "paths"
            yield _Task(job.number, inputs, _portrait_key(job), str(target) if keep_path else None,
                        time.perf_counter() - t0)

    by_number = {job.number: job for job in pending}
    with _StopOnSigint(stop) as sigint:
        try:
            _drive(checked(), lambda: _make_backend(spec, workers, ray_address, on_stage, sigint.event),
                   sigint.event, reporter,
                   lambda task, future: _record(task, future, by_number[task.number], out_dir, reporter))
        finally:
            reporter.close()
    return reporter.summary


def _drive(tasks: Iterator[_Task], make_backend: Callable[[], Any], stop: threading.Event, reporter: _Report,
           record: Callable[[_Task, cf.Future], None]) -> None:
    """Keep the backend's slots busy with checked tasks, record each as it finishes; on ``stop``,
    tell the workers to stop, drop queued tasks and collect the running ones (interrupted)."""
    backend: Any = None
    in_flight: dict[cf.Future, _Task] = {}
    exhausted = stopping = False
    try:
        while True:
            while not (exhausted or stop.is_set()) and (backend is None or len(in_flight) < backend.capacity):
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                if backend is None:
                    backend = make_backend()
                in_flight[backend.submit(task)] = task
            if not in_flight:
                break
            done, _ = cf.wait(list(in_flight), timeout=0.2, return_when=cf.FIRST_COMPLETED)
            backend.poll()
            if stop.is_set() and not stopping:
                stopping = True
                backend.stop()
                for future in in_flight:
                    future.cancel()
            for future in done:
                task = in_flight.pop(future)
                backend.release(future)
                record(task, future)
    finally:
        if stop.is_set():
            reporter.summary.interrupted = True
        if backend is not None:
            backend.close()


def _make_backend(spec: _ModelSpec, workers: int | None, ray_address: str | None, on_stage: StageCallback | None,
                  stop: threading.Event) -> Any:
    """The worker backend, made when the first checked job is ready (models load only if needed)."""
    if ray_address is not None:
        return _Ray(spec, workers, ray_address)
    from . import weights
    from .model_locations import default_models_dir

    weights.find_model_files(spec.models_dir or default_models_dir())  # missing files: stop at once
    if (workers or 1) == 1:
        return _Inline(spec, on_stage, stop)
    return _Processes(spec, workers or 1, on_stage)


def _record(task: _Task, future: cf.Future, job: Job, out_dir: Path, reporter: _Report) -> None:
    """A finished future -> a report line (interrupted or cancelled jobs are not reported)."""
    if future.cancelled():
        return
    exc = future.exception()
    if isinstance(exc, KDTalkerError):  # the models did not load: no job can run
        raise exc
    if exc is not None:  # the worker itself died (killed, out of memory, ...)
        reporter.add(JobReport(job.number, job.out, "failed", f"worker lost: {one_line(exc)}"))
        return
    outcome: _Outcome = future.result()
    if outcome.interrupted:
        return
    seconds = task.check_seconds + outcome.seconds
    if outcome.error is not None:
        reporter.add(JobReport(job.number, job.out, "failed", outcome.error, seconds=seconds,
                               input_error=outcome.input_error))
        return
    if outcome.data is not None:
        try:
            _write_atomically(out_dir / str(job.out), outcome.data)
        except OSError as exc:
            reporter.add(JobReport(job.number, job.out, "failed", f"cannot write the video: {exc}", seconds=seconds))
            return
    reporter.add(JobReport(job.number, job.out, "done", frames=outcome.frames, seconds=seconds))


def _job_list(jobs: str | Path | Iterable[Job | Mapping[str, Any]], defaults: GenerateOptions) -> list[Job]:
    if isinstance(jobs, (str, Path)):
        return read_jobs(jobs, defaults)
    out: list[Job] = []
    for number, job in enumerate(jobs, 1):
        out.append(job if isinstance(job, Job) else make_job(number, job, base_dir=Path.cwd(), defaults=defaults))
    return out


# ----------------------------------------------------------------------------------- progress


class ProgressLine:
    """A one-line text progress bar on stderr over jobs and frames: pass it as both ``on_job`` and
    ``on_stage`` (``progress.job`` / ``progress.stage``)."""

    WIDTH = 24

    def __init__(self, total_jobs: int, stream: Any = None) -> None:
        self.total = total_jobs
        self.stream = stream if stream is not None else sys.stderr
        self.counts: collections.Counter[str] = collections.Counter()
        self.frames = 0
        self.current = ""
        self.t0 = time.perf_counter()

    def job(self, report: JobReport) -> None:
        self.counts[report.status] += 1
        if report.status == "done":
            self.frames += report.frames or 0
        if report.status == "failed":
            self.stream.write(f"\rjob {report.job} failed: {report.error}\n")
        self.current = ""
        self._draw()

    def stage(self, job: int, stage: str, done: int, total: int) -> None:
        self.current = f" | job {job} {stage} {done}/{total}"
        self._draw()

    def _draw(self) -> None:
        finished = sum(self.counts.values())
        filled = int(self.WIDTH * finished / max(self.total, 1))
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        line = (f"\rbatch [{'#' * filled}{'.' * (self.WIDTH - filled)}] {finished}/{self.total} jobs "
                f"({self.counts['done']} done, {self.counts['skipped']} skipped, {self.counts['failed']} failed) "
                f"| {self.frames} frames, {self.frames / elapsed:.2f}/s{self.current}")
        self.stream.write(line.ljust(120))
        if finished >= self.total:
            self.stream.write("\n")
        self.stream.flush()
