"""Command line: ``python -m kdtalker_core generate|doctor|convert|download``.

Contract: exit 0 on success; exit 2 with one ``error: ...`` line on stderr for bad input or missing /
invalid model files (no traceback unless ``--debug``); exit 1 for any other failure. The output video
appears only when complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import InputError, KDTalkerError

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_IMAGE = ASSETS / "sample_portrait.jpg"
SAMPLE_AUDIO = ASSETS / "sample_speech.wav"


def _default_models_dir() -> Path:
    return Path(os.environ.get("KDTALKER_MODELS_DIR") or "models")


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
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=50, help="DDIM steps (official 50; 10 is close and 5x faster)")
    g.add_argument("--smoothing", type=float, default=1.0, help="Kalman strength: 1 official, 0 off")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="fp32")
    g.add_argument("--attention", choices=["auto", "xformers", "sdpa", "math"], default="auto")
    g.add_argument("--chunk-size", type=int, default=4, help="frames rendered per batch")
    g.add_argument("--no-paste-back", action="store_true", help="write the 512x512 face crop only")
    g.add_argument("--face-index", type=int, default=0,
                   help="which face, in detector order (0 = the most confident, as the official code)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--max-seconds", type=float, default=None, help="only use this much of the audio")
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


class _Progress:
    """A one-line text progress bar on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label:>8} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                         f"({rate:.2f}/s)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_generate(args: argparse.Namespace) -> int:
    """Run the whole pipeline and write an mp4."""
    from . import audio as audio_mod
    from . import face, pipeline, weights
    from .video import write_mp4

    t_start = time.perf_counter()
    # Validate inputs before loading any model, so bad input fails in seconds.
    if not args.image.is_file():
        raise InputError(f"image not found: {args.image}")
    photo = face.to_rgb_uint8(_read_image(args.image), str(args.image))
    crop = face.crop_portrait(photo, face_index=args.face_index, name=str(args.image))
    waveform, sr = audio_mod.load_audio_file(args.audio)
    if args.max_seconds is not None:
        if not args.max_seconds > 0:
            raise InputError(f"--max-seconds must be positive, got {args.max_seconds}")
        waveform = waveform[..., : int(args.max_seconds * sr)]
    audio_mod.to_mono_16k(waveform[..., : sr], sr)  # cheap sanity check of the samples
    if args.out.suffix.lower() != ".mp4":
        raise InputError(f"--out must end in .mp4, got {args.out}")

    paths = weights.find_model_files(args.models_dir or _default_models_dir())
    models = pipeline.load_models(paths=paths, device=args.device, precision=args.precision,
                                  attention=args.attention)
    portrait = pipeline.prepare_portrait(models, photo, crop=crop)
    feats = pipeline.encode_audio(models, waveform, sr)
    motion = pipeline.sample_motion(models, portrait, feats, seed=args.seed, steps=args.steps,
                                    smoothing=args.smoothing, callback=_Progress("motion"))
    t_render = time.perf_counter()
    frames = pipeline.iter_render(models, portrait, motion, chunk_size=args.chunk_size,
                                  paste_back=not args.no_paste_back, callback=_Progress("render"))
    n = write_mp4(args.out, frames, feats.fps, feats.waveform_16k, 16000)
    total = time.perf_counter() - t_start
    print(f"wrote {args.out}: {n} frames ({n / feats.fps:.2f} s at {feats.fps:g} fps) in {total:.1f} s, "
          f"render {n / max(time.perf_counter() - t_render, 1e-9):.3f} frames/s, "
          f"peak memory {_peak_memory_mb(models.device):.0f} MB on {models.device}")
    return 0


def _read_image(path: Path):
    """Read a photo into an (H,W,C) uint8 array with imageio; unreadable files are InputErrors."""
    import imageio.v3 as iio

    try:
        return iio.imread(path)
    except Exception as exc:  # imageio raises many types for bad files
        raise InputError(f"cannot read image {path}: {exc}; use a PNG or JPEG photo") from exc


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
