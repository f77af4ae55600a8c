"""Command line: ``python -m kdtalker_core generate|batch|doctor|convert|download``.

Contract: exit 0 on success; exit 2 with one ``error: ...`` line on stderr for bad input or missing /
invalid model files (no traceback unless ``--debug``); exit 1 for any other failure. The output video
appears only when complete.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import options
from .errors import InputError, KDTalkerError
from .model_locations import default_models_dir as _default_models_dir

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_IMAGE = ASSETS / "sample_portrait.jpg"
SAMPLE_AUDIO = ASSETS / "sample_speech.wav"



def _device_arg(value: str) -> str:
    """argparse type of ``--device``: an unknown device is a usage error (exit 2), not a crash."""
    try:
        return options.check_device(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder holding kdtalker/ and liveportrait/ (ComfyUI's models folder works); "
                        "default $KDTALKER_MODELS_DIR, else ./models")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_performance_flags(g: argparse.ArgumentParser) -> None:
    """Blinks, eye / mouth openness, calm silences, stitching and head pose from a video (defaults: off)."""
    opt = options.DEFAULTS
    g.add_argument("--blink-rate", type=float, default=opt.blink_rate,
                   help=f"natural blinks per minute, 0-{options.MAX_BLINK_RATE:g} (0 off; 15 looks natural); "
                        "the schedule follows --seed")
    g.add_argument("--blink-duration", type=float, default=opt.blink_duration,
                   help=f"seconds per blink ({options.MIN_BLINK_DURATION:g}-{options.MAX_BLINK_DURATION:g})")
    g.add_argument("--eye-open", type=float, default=opt.eye_open,
                   help=f"eye openness relative to the photo, 0-{options.MAX_EYE_OPEN:g} (1 unchanged, 0 closed)")
    g.add_argument("--mouth-open", type=float, default=opt.mouth_open,
                   help=f"scale of the mouth opening, 0-{options.MAX_MOUTH_OPEN:g} (1 unchanged)")
    g.add_argument("--silence-calm", type=float, default=opt.silence_calm,
                   help="0-1: close the mouth and calm the head in pauses of the speech (0 off)")
    g.add_argument("--stitching", action="store_true", default=opt.stitching,
                   help="apply LivePortrait's stitching network (needs stitching_retargeting_module)")
    g.add_argument("--pose-video", metavar="FILE", default=opt.pose_video,
                   help="take the head pose (rotation, position, zoom) from the face in this video; lips "
                        "still follow the speech")
    g.add_argument("--pose-mode", choices=options.POSE_MODES, default=opt.pose_mode,
                   help="relative: the video's head movement applied to the photo's pose (LivePortrait's "
                        "default); absolute: the video's pose itself")
    g.add_argument("--pose-fit", choices=options.POSE_FITS, default=opt.pose_fit,
                   help="a video shorter than the speech: loop, pingpong, or cut the result to the video")
    g.add_argument("--pose-expression", type=float, default=opt.pose_expression, metavar="W",
                   help="0-1: share of the face expression taken from the video too (0: from the speech only)")


class _Repeatable(argparse.Action):
    """Like ``action="append"``, but given once (or not at all) the value stays a plain value, so
    ``vars(args)`` maps straight onto :class:`options.GenerateOptions`; given again, a list in order."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        seen = f"_{self.dest}_given"
        if not getattr(namespace, seen, False):
            setattr(namespace, seen, True)
            setattr(namespace, self.dest, values)
            return
        current = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*(current if isinstance(current, list) else [current]), values])


def _as_list(value: object) -> list:
    """A :class:`_Repeatable` option's value as a list."""
    return list(value) if isinstance(value, list) else [value]


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """The model and generation flags of ``generate``, also the defaults of ``batch`` jobs."""
    opt = options.DEFAULTS
    p.add_argument("--seed", type=int, default=opt.seed)
    p.add_argument("--steps", type=int, default=opt.steps,
                   help=f"DDIM steps (official {opt.steps}; 10 is close and 5x faster)")
    p.add_argument("--eta", type=float, default=opt.eta, help="DDIM eta: 0 deterministic (official), 1 like DDPM")
    p.add_argument("--smoothing", type=float, default=opt.smoothing, help="Kalman strength: 1 official, 0 off")
    p.add_argument("--fps", type=float, default=opt.fps,
                   help=f"output frame rate ({options.MIN_FPS:g}-{options.MAX_FPS:g}); the motion is made at "
                        f"{options.MODEL_FPS:g} fps, the model's rate, and resampled")
    m = options.MODEL_DEFAULTS
    p.add_argument("--precision", choices=options.PRECISIONS, default=m.precision,
                   help="auto: bf16 where the device has native bf16 (CUDA, AVX512-BF16/AMX CPUs), else fp32")
    p.add_argument("--attention", choices=options.ATTENTION_BACKENDS, default=m.attention)
    p.add_argument("--chunk-size", type=int, default=opt.chunk_size, help="frames rendered per batch")
    p.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="write the 512x512 face crop only")
    p.add_argument("--face-index", type=int, action=_Repeatable, default=opt.face_index,
                   help="which face, counted in --face-order (0 = first); repeat it (--face-index 0 --audio "
                        "a.wav --face-index 1 --audio b.wav) to make several faces of the photo talk in one "
                        "video, each with its own seed (--seed + k) and idle while its own speech is silent")
    p.add_argument("--face-order", choices=options.FACE_ORDERS, default=opt.face_order,
                   help="how faces are counted: detector = most confident first (the official choice)")
    p.add_argument("--crop-mode", choices=options.CROP_MODES, default=opt.crop_mode,
                   help="official: KDTalker's landmark crop; square(_axis): an eye/mouth-aligned square")
    p.add_argument("--device", default=m.device, type=_device_arg, help=f"{', '.join(options.DEVICES)}, cuda:1, ...")
    p.add_argument("--start-seconds", type=float, default=opt.start_seconds, help="skip this much of the audio")
    p.add_argument("--max-seconds", "--duration-seconds", dest="duration_seconds", type=float,
                   default=opt.duration_seconds, help="only use this much of the audio (after --start-seconds)")
    _add_performance_flags(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="python -m kdtalker_core",
                                     description="KDTalker talking portraits: one photo + speech -> video.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="photo + speech -> mp4 with sound")
    g.add_argument("--image", type=Path, default=SAMPLE_IMAGE, help="portrait photo (default: bundled sample)")
    g.add_argument("--audio", type=Path, action=_Repeatable, default=SAMPLE_AUDIO,
                   help="speech file (default: bundled sample); with several --face-index, repeat it to give "
                        "each face its own speech in the same order, or give it once for a shared track")
    g.add_argument("--out", type=Path, default=Path("talk.mp4"), help="output mp4 path")
    _add_generation_options(g)
    _add_common(g)

    b = sub.add_parser("batch", help="many photo + speech jobs from a JSONL/CSV file (resumable; local workers or Ray)")
    b.add_argument("jobs", type=Path, help="JSONL or CSV jobs file: image, audio, out (+ any option below by its name)")
    b.add_argument("--out-dir", type=Path, required=True, help="where the videos and report.jsonl go")
    b.add_argument("--workers", type=int, default=None,
                   help="worker processes, one model copy each (default 1: this process); with --ray: actors "
                        "(default one per GPU)")
    b.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: a cluster address, or nothing for $RAY_ADDRESS / a new local cluster "
                        '(pip install "comfyui-kdtalker[ray]")')
    b.add_argument("--ray-outputs", choices=["bytes", "paths"], default="bytes",
                   help="bytes: videos come back through Ray's object store; paths: workers write into --out-dir "
                        "(a shared filesystem)")
    b.add_argument("--report", type=Path, default=None, help="JSONL report (default OUT_DIR/report.jsonl)")
    _add_generation_options(b)
    _add_common(b)

    d = sub.add_parser("doctor", help="check torch, devices, optional packages and every model file")
    _add_common(d)

    c = sub.add_parser("convert", help="official checkpoints -> single safetensors files")
    c.add_argument("--out-dir", type=Path, default=None,
                   help="where to write (default: next to the originals in the models folder)")
    _add_common(c)

    dl = sub.add_parser("download", help="download the official weights (explicit request only)")
    dl.add_argument("--what", choices=["all", "kdtalker", "liveportrait"], default="all")
    _add_common(dl)
    return parser


class _StageProgress:
    """``on_stage(stage, done, total)`` as one text progress line per stage on stderr."""

    WIDTH = 30

    def __init__(self) -> None:
        self.stage = ""
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.stage, self.t0 = stage, time.perf_counter()
        filled = int(self.WIDTH * done / max(total, 1))
        line = f"\r{stage:>8} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}"
        if done and total > 1:
            line += f" ({done / max(time.perf_counter() - self.t0, 1e-9):.2f}/s)"
        sys.stderr.write(line + ("\n" if done >= total else ""))
        sys.stderr.flush()


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_generate(args: argparse.Namespace) -> int:
    """Check the inputs (seconds, no models), load the models, stream the frames into an mp4."""
    from . import pipeline, precision, weights
    from .video import Mp4Writer

    t_start = time.perf_counter()
    if args.out.suffix.lower() != ".mp4":
        raise InputError(f"--out must end in .mp4, got {args.out}")
    faces, audios = _as_list(args.face_index), _as_list(args.audio)
    args.face_index, args.audio = faces[0], audios[0]
    opts = options.GenerateOptions.from_mapping(vars(args))
    if len(faces) > 1 or len(audios) > 1:  # several faces in one photo
        from . import multiface

        inputs, run = multiface.read_inputs(args.image, audios, faces, opts), multiface.run
    else:
        inputs, run = pipeline.read_inputs(args.image, args.audio, opts), pipeline.run

    paths = weights.find_model_files(args.models_dir or _default_models_dir())
    models = pipeline.load_models(paths=paths, device=args.device, precision=args.precision,
                                  attention=args.attention)
    result = run(models, inputs, on_stage=_StageProgress(), sink=Mp4Writer(args.out))
    n, fps = result.num_frames, result.fps
    total = time.perf_counter() - t_start
    print(f"wrote {args.out}: {n} frames ({n / fps:.2f} s at {fps:g} fps) in {total:.1f} s, "
          f"render {n / max(result.seconds['render'], 1e-9):.3f} frames/s, "
          f"precision {precision.describe(args.precision, models.device)}, "
          f"peak memory {_peak_memory_mb(models.device):.0f} MB on {models.device}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """Run a jobs file (:func:`kdtalker_core.batch.run`): exit 0 all done, 2 some bad inputs, 1 otherwise."""
    from . import batch

    if isinstance(args.face_index, list):
        raise InputError("batch takes one --face-index (the default of every job; a job's face_index overrides it)")
    defaults = options.GenerateOptions.from_mapping(vars(args))
    jobs = batch.read_jobs(args.jobs, defaults)
    progress = batch.ProgressLine(len(jobs))
    summary = batch.run(jobs, args.out_dir, defaults=defaults, models_dir=args.models_dir,
                        model_options=options.ModelOptions(precision=args.precision, attention=args.attention,
                                                           device=args.device),
                        workers=args.workers, ray_address=args.ray, ray_outputs=args.ray_outputs,
                        report=args.report, on_job=progress.job, on_stage=progress.stage)
    report = args.report or args.out_dir / batch.REPORT_NAME
    print(f"{summary.count('done')} done, {summary.count('skipped')} skipped, {summary.count('failed')} failed"
          f"{' (interrupted)' if summary.interrupted else ''}; report: {report}")
    return summary.exit_code


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print the environment and the status of every model file; exit 2 if something is missing."""
    from . import doctor

    report, ok = doctor.run(args.models_dir or _default_models_dir())
    print(report)
    return 0 if ok else 2


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert official checkpoints into our single safetensors files."""
    from . import weights

    written = weights.convert_all(args.models_dir or _default_models_dir(), args.out_dir)
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download the official weights from their Hugging Face repositories (explicit request only)."""
    from . import download

    for p in download.download(args.models_dir or _default_models_dir(), what=args.what):
        print(f"ok {p}")
    return 0


COMMANDS = {"generate": cmd_generate, "batch": cmd_batch,
            "doctor": cmd_doctor, "convert": cmd_convert, "download": cmd_download}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, map errors to exit codes (2 user error, 1 other)."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KDTalkerError as exc:
        if args.debug:
            raise
        one_line = " | ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(f"failed: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        return 1
