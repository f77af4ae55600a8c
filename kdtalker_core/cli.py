"""Command line: ``python -m kdtalker_core generate|doctor|convert|download``.

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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder holding kdtalker/ and liveportrait/ (ComfyUI's models folder works); "
                        "default $KDTALKER_MODELS_DIR, else ./models")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="python -m kdtalker_core",
                                     description="KDTalker talking portraits: one photo + speech -> video.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="photo + speech -> mp4 with sound")
    g.add_argument("--image", type=Path, default=SAMPLE_IMAGE, help="portrait photo (default: bundled sample)")
    g.add_argument("--audio", type=Path, default=SAMPLE_AUDIO, help="speech file (default: bundled sample)")
    g.add_argument("--out", type=Path, default=Path("talk.mp4"), help="output mp4 path")
    opt = options.DEFAULTS
    g.add_argument("--seed", type=int, default=opt.seed)
    g.add_argument("--steps", type=int, default=opt.steps,
                   help=f"DDIM steps (official {opt.steps}; 10 is close and 5x faster)")
    g.add_argument("--eta", type=float, default=opt.eta, help="DDIM eta: 0 deterministic (official), 1 like DDPM")
    g.add_argument("--smoothing", type=float, default=opt.smoothing, help="Kalman strength: 1 official, 0 off")
    g.add_argument("--fps", type=float, default=opt.fps, help="video frame rate (KDTalker was trained at 25)")
    m = options.MODEL_DEFAULTS
    g.add_argument("--precision", choices=options.PRECISIONS, default=m.precision,
                   help="auto: bf16 where the device has native bf16 (CUDA, AVX512-BF16/AMX CPUs), else fp32")
    g.add_argument("--attention", choices=options.ATTENTION_BACKENDS, default=m.attention)
    g.add_argument("--chunk-size", type=int, default=opt.chunk_size, help="frames rendered per batch")
    g.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="write the 512x512 face crop only")
    g.add_argument("--face-index", type=int, default=opt.face_index,
                   help="which face, counted in --face-order (0 = first)")
    g.add_argument("--face-order", choices=options.FACE_ORDERS, default=opt.face_order,
                   help="how faces are counted: detector = most confident first (the official choice)")
    g.add_argument("--crop-mode", choices=options.CROP_MODES, default=opt.crop_mode,
                   help="official: KDTalker's landmark crop; square(_axis): an eye/mouth-aligned square")
    g.add_argument("--device", default=m.device, help=f"{', '.join(options.DEVICES)}, cuda:1, ...")
    g.add_argument("--start-seconds", type=float, default=opt.start_seconds, help="skip this much of the audio")
    g.add_argument("--max-seconds", "--duration-seconds", dest="duration_seconds", type=float,
                   default=opt.duration_seconds, help="only use this much of the audio (after --start-seconds)")
    _add_common(g)

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
    inputs = pipeline.read_inputs(args.image, args.audio, options.GenerateOptions.from_mapping(vars(args)))

    paths = weights.find_model_files(args.models_dir or _default_models_dir())
    models = pipeline.load_models(paths=paths, device=args.device, precision=args.precision,
                                  attention=args.attention)
    result = pipeline.run(models, inputs, on_stage=_StageProgress(), sink=Mp4Writer(args.out))
    n, fps = result.num_frames, result.fps
    total = time.perf_counter() - t_start
    print(f"wrote {args.out}: {n} frames ({n / fps:.2f} s at {fps:g} fps) in {total:.1f} s, "
          f"render {n / max(result.seconds['render'], 1e-9):.3f} frames/s, "
          f"precision {precision.describe(args.precision, models.device)}, "
          f"peak memory {_peak_memory_mb(models.device):.0f} MB on {models.device}")
    return 0


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


COMMANDS = {"generate": cmd_generate, "doctor": cmd_doctor, "convert": cmd_convert, "download": cmd_download}


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
