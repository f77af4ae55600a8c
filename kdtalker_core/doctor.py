"""``python -m kdtalker_core doctor``: what this machine has and where every model file is.

Prints torch, device, precision support, attention backends, the face and audio dependencies and,
for every model file, where it was found or exactly where to put it and where to download it.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

from .errors import KDTalkerError


def _environment_lines() -> list[str]:
    import torch

    from .attention import available_backends
    from .frame_threads import frame_threads
    from .options import MODEL_DEFAULTS
    from .pipeline import resolve_device
    from .precision import PRECISIONS, resolve_precision
    from .precision import describe as describe_precision

    lines = [f"python       {platform.python_version()} ({platform.machine()})",
             f"torch        {torch.__version__}"]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        bf16 = "yes" if torch.cuda.is_bf16_supported() else "no"
        lines.append(f"device       cuda: {name} (bf16 {bf16})")
    else:
        lines.append(f"device       cpu ({torch.get_num_threads()} threads); no CUDA GPU visible")
    default_device = resolve_device(MODEL_DEFAULTS.device)
    lines.append(f"precision    {describe_precision(MODEL_DEFAULTS.precision, default_device)} on {default_device}")
    dtype = PRECISIONS[resolve_precision(MODEL_DEFAULTS.precision, default_device)]
    side_by_side = frame_threads(default_device, dtype)
    lines.append("render       " + (f"{side_by_side} frames side by side, one per thread (KDTALKER_FRAME_THREADS)"
                                    if side_by_side > 1 else "one frame at a time"))
    lines.append(f"attention    {', '.join(available_backends())}")
    for mod, why in (("xformers", "optional, faster attention on CUDA"), ("dlib", "face detection"),
                     ("av", "audio decoding and mp4 writing"), ("soxr", "resampling")):
        found = importlib.util.find_spec(mod) is not None
        lines.append(f"{mod:<12} {'ok' if found else 'missing'} ({why})")
    try:
        from .face import landmark_model_path

        lines.append(f"landmarks    ok {landmark_model_path()}")
    except KDTalkerError as exc:
        lines.append(f"landmarks    missing: {exc}")
    return lines


def _model_lines(models_dir: Path) -> tuple[list[str], bool]:
    from . import weights

    try:
        paths = weights.find_model_files(models_dir)
    except KDTalkerError as exc:
        return [f"models       MISSING in {models_dir.resolve()}", str(exc)], False
    lines = [f"models       {models_dir.resolve()}"]
    lines.append(f"  kdtalker   {paths.kdtalker}" + ("  (single-file bundle)" if paths.kdtalker_is_bundle else ""))
    if not paths.kdtalker_is_bundle:
        lines.append(f"  wav2lip    {paths.wav2lip}")
    lines.append(f"  norm       {paths.norm}")
    for name, path in sorted(paths.liveportrait.items()):
        lines.append(f"  {name:<36} {path if path else 'absent (optional)'}")
    return lines, True


def run(models_dir: str | Path) -> tuple[str, bool]:
    """Return the report text and whether every required model file was found."""
    model_lines, ok = _model_lines(Path(models_dir))
    return "\n".join(_environment_lines() + model_lines), ok
