"""End-to-end composition: photo + speech -> talking-portrait frames.

This is the library's public API; the ComfyUI nodes and the CLI are thin adapters over it::

    models = load_models("models")                       # F, M, W, G, S, audio encoder, denoiser
    portrait = prepare_portrait(models, photo)           # crop, f_s, source keypoints, paste mask
    audio = encode_audio(models, waveform, sample_rate)  # (T,512) Wav2Lip features at 25 fps
    motion = sample_motion(models, portrait, audio)      # (T,70) motion, DDIM + Kalman
    result = render(models, portrait, motion)            # (T,H,W,3) frames pasted into the photo

Everything between the crop and the frames stays on ``models.device``. Motion is generated whole
(70 floats a frame); rendering runs in chunks, so memory does not grow with the audio length when
frames are consumed with :func:`iter_render`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import audio as audio_mod
from . import face, weights
from . import motion as motion_mod
from . import render as render_mod
from .attention import set_attention_backend
from .errors import AudioError, InputError
from .keypoints import get_kp_info, transform_keypoint

ProgressCallback = Callable[[int, int], None]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 on CUDA with bf16 support, fp32 elsewhere (the official numbers)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: use one of auto, {', '.join(PRECISIONS)}")
    return precision


@dataclass
class KDTalkerModels:
    """Every network of the pipeline, in eval mode on one device.

    Names follow the paper: F = appearance_extractor, M = motion_extractor, W = warping_network,
    G = spade_decoder, S = stitching (optional; KDTalker renders without it).
    """

    appearance_extractor: torch.nn.Module
    motion_extractor: torch.nn.Module
    warping_network: torch.nn.Module
    spade_decoder: torch.nn.Module
    audio_encoder: torch.nn.Module
    denoiser: torch.nn.Module
    norm: motion_mod.NormStats
    stitching: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    attention_backend: str = "auto"

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of rendering (and of the denoiser on CUDA; on a CPU it stays float32)."""
        return PRECISIONS[self.precision]

    def modules(self) -> dict[str, torch.nn.Module]:
        """Name -> module for every network that is present."""
        mods = {
            "appearance_extractor": self.appearance_extractor,
            "motion_extractor": self.motion_extractor,
            "warping_network": self.warping_network,
            "spade_decoder": self.spade_decoder,
            "audio_encoder": self.audio_encoder,
            "denoiser": self.denoiser,
        }
        if self.stitching is not None:
            mods["stitching"] = self.stitching
        return mods

    def to(self, device: str | torch.device) -> KDTalkerModels:
        """Move every network to ``device`` (in place) and return self."""
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self


def load_models(
    models_dir: str | Path | None = None,
    *,
    paths: weights.ModelPaths | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    attention: str = "auto",
    use_ema: bool = False,
) -> KDTalkerModels:
    """Find, validate and load every checkpoint; return the networks on ``device`` in eval mode.

    ``models_dir`` holds ``kdtalker/`` and ``liveportrait/`` (ComfyUI's models folder works); when
    None, ``$KDTALKER_MODELS_DIR`` or ``./models``. ``paths`` overrides discovery. Missing or wrong
    files raise :class:`~kdtalker_core.errors.ModelFileError` naming every place searched.
    """
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    set_attention_backend(attention)
    if paths is None:
        paths = weights.find_model_files(models_dir)

    bundle = weights.load_kdtalker_bundle(paths, use_ema=use_ema)
    lp = weights.load_liveportrait(paths.liveportrait or paths.liveportrait_dir)

    def load(name: str, state: Any, file: Any, what: str) -> torch.nn.Module:
        # Build on the CPU (fp32, strict load with clear errors), move to the device afterwards.
        return weights.load_network(name, state, file=file, what=what)

    denoiser = load("denoiser", bundle.denoiser, bundle.denoiser_file, "KDTalker motion denoiser")
    audio_encoder = load("audio_encoder", bundle.audio_encoder, bundle.audio_encoder_file,
                         "Wav2Lip audio encoder")
    appearance = load("appearance_feature_extractor", lp["appearance_feature_extractor"],
                      lp.files["appearance_feature_extractor"], "LivePortrait appearance feature extractor (F)")
    motion_extractor = load("motion_extractor", lp["motion_extractor"], lp.files["motion_extractor"],
                            "LivePortrait motion extractor (M)")
    warping = load("warping_module", lp["warping_module"], lp.files["warping_module"],
                   "LivePortrait warping network (W)")
    spade = load("spade_generator", lp["spade_generator"], lp.files["spade_generator"],
                 "LivePortrait SPADE decoder (G)").fuse_spectral_norm()
    stitching = None
    if lp.get("stitching_retargeting_module") is not None:
        stitching = load("retarget_shoulder", lp["stitching_retargeting_module"]["retarget_shoulder"],
                         lp.files["stitching_retargeting_module"], "LivePortrait stitching (S)")

    models = KDTalkerModels(
        appearance_extractor=appearance,
        motion_extractor=motion_extractor,
        warping_network=warping,
        spade_decoder=spade,
        audio_encoder=audio_encoder,
        denoiser=denoiser,
        norm=motion_mod.NormStats.from_dict(bundle.norm),
        stitching=stitching,
        device=dev,
        precision=precision,
        attention_backend=attention,
    )
    for m in models.modules().values():
        m.eval().requires_grad_(False)
    if dev.type == "cuda" and precision != "fp32":
        # The denoiser computes in its parameters' dtype (the sampler keeps x_t in fp32). On CPUs it
        # stays fp32: without native bf16 instructions half precision is far slower there.
        denoiser.to(PRECISIONS[precision])
    return models.to(dev)


# --------------------------------------------------------------------------- portrait


@dataclass
class Portrait:
    """Everything derived from the photo, on the models' device.

    photo (H,W,3) float [0,1]; source (1,3,256,256) float [0,1]; feature_3d (1,32,16,64,64) = f_s;
    kp_info = source keypoint info (angles in degrees); x_s (1,21,3) source keypoints;
    paste_mask (H,W) float feathered mask in photo space (computed once: no background jitter).
    """

    photo: torch.Tensor
    crop: Any
    source: torch.Tensor
    feature_3d: torch.Tensor
    kp_info: dict[str, torch.Tensor]
    x_s: torch.Tensor
    paste_mask: torch.Tensor

    def crop_preview(self) -> torch.Tensor:
        """The 256x256 source crop as a (1,256,256,3) float image (ComfyUI IMAGE layout, CPU)."""
        return self.source.permute(0, 2, 3, 1).float().cpu()


@torch.inference_mode()
def prepare_portrait(
    models: KDTalkerModels,
    image: Any,
    *,
    face_index: int = 0,
    order: str = "detector",
    crop_mode: str = "official",
    name: str = "image",
    crop: face.PortraitCrop | None = None,
) -> Portrait:
    """Detect and crop the face, then run F and M once: the portrait every later stage uses.

    ``image``: (H,W), (H,W,1|3|4) or (1,H,W,C); uint8 or float [0,1]; numpy or torch (alpha is
    dropped as the official PIL ``convert('RGB')`` does). ``order``/``face_index`` pick among
    several faces (``"detector"`` order is the official choice: the first detection). ``crop``:
    a crop from :func:`face.crop_portrait` made earlier (e.g. to validate a photo before loading
    the models), used instead of detecting again.
    """
    photo = face.to_rgb_uint8(image, name)
    if crop is None:
        crop = face.crop_portrait(photo, face_index=face_index, order=order, mode=crop_mode, name=name)
    dev = models.device
    source = torch.from_numpy(crop.source).to(dev).permute(2, 0, 1)[None].float().div(255.0)
    kp_info = get_kp_info(models.motion_extractor, source)
    feature_3d = models.appearance_extractor(source)
    x_s = transform_keypoint(kp_info)
    photo_t = torch.from_numpy(photo).to(dev).float().div(255.0)
    mask = face.make_paste_mask(crop, photo.shape[:2], device=dev)
    return Portrait(photo_t, crop, source, feature_3d, kp_info, x_s, mask)


# --------------------------------------------------------------------------- audio


@dataclass
class AudioFeatures:
    """Per-frame Wav2Lip features: features (T,512) on the device, waveform_16k the audio they cover."""

    features: torch.Tensor
    fps: float
    waveform_16k: torch.Tensor

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])


@torch.inference_mode()
def encode_audio(
    models: KDTalkerModels,
    waveform: Any,
    sample_rate: int,
    *,
    fps: float = 25.0,
    start_seconds: float = 0.0,
    duration_seconds: float | None = None,
) -> AudioFeatures:
    """Speech (any rate, any channel count) -> (T,512) features at ``fps``.

    ``waveform`` is (N,), (C,N) or ComfyUI's (1,C,N) float. ``start_seconds``/``duration_seconds``
    trim the speech first. Raises AudioError for empty, non-finite or sub-frame audio.
    """
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    wav = audio_mod.to_mono_16k(waveform, sample_rate)
    start = max(0, int(round(start_seconds * 16000)))
    stop = None if duration_seconds is None or duration_seconds <= 0 else start + int(round(duration_seconds * 16000))
    if start >= wav.shape[0]:
        raise AudioError(f"start {start_seconds:.2f} s is past the end of the audio ({wav.shape[0] / 16000:.2f} s)")
    wav = wav[start:stop]
    windows, wav_cropped = audio_mod.audio_to_mel_windows(wav.to(models.device), 16000, fps=fps)
    features = models.audio_encoder.encode_in_chunks(windows)
    return AudioFeatures(features=features, fps=float(fps), waveform_16k=wav_cropped.float().cpu())


# --------------------------------------------------------------------------- motion


def sample_motion(
    models: KDTalkerModels,
    portrait: Portrait,
    audio: AudioFeatures,
    *,
    seed: int = 0,
    steps: int = 50,
    eta: float = 0.0,
    smoothing: float = 1.0,
    callback: ProgressCallback | None = None,
) -> motion_mod.Motion:
    """Generate (T,70) motion with the windowed DDIM sampler, denormalise, Kalman-smooth.

    Same seed on the same device gives the same motion. ``smoothing`` 1.0 is the official Kalman
    setting, 0 turns it off. ``callback(done, total)`` counts denoiser steps over all windows.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    input_x, ori_kp = motion_mod.normalize_source(portrait.kp_info, models.norm)
    generator = torch.Generator(device=models.device).manual_seed(int(seed))
    # Tokens in the denoiser's own dtype: it is reduced only on CUDA (see load_models), so on a CPU
    # a bf16/fp16 setting must not round the fp32 model's inputs.
    token_dtype = next(models.denoiser.parameters()).dtype

    def progress(window: int, n_windows: int, step: int, n_steps: int) -> None:
        if callback is not None:
            callback(window * n_steps + step + 1, n_windows * n_steps)

    with torch.inference_mode():
        motion_norm = motion_mod.generate_motion_normalized(
            models.denoiser, input_x, ori_kp, audio.features,
            steps=steps, eta=eta, generator=generator, callback=progress, dtype=token_dtype,
        )
        motion = motion_mod.denormalize(motion_norm.float(), models.norm, fps=audio.fps)
        return motion_mod.smooth_motion(motion, strength=smoothing)


# --------------------------------------------------------------------------- rendering


@dataclass
class RenderResult:
    """Frames (T,H,W,3) float [0,1] on the CPU, the paste mask (H,W), and the frame rate."""

    frames: torch.Tensor
    mask: torch.Tensor
    fps: float


def iter_render(
    models: KDTalkerModels,
    portrait: Portrait,
    motion: motion_mod.Motion,
    *,
    chunk_size: int = 8,
    paste_back: bool = True,
    relative: bool = False,
    callback: ProgressCallback | None = None,
) -> Iterator[torch.Tensor]:
    """Yield rendered frames chunk by chunk: (n,H,W,3) float [0,1] on the device.

    With ``paste_back`` the 512x512 face is blended into the original photo (H,W); otherwise the
    raw 512x512 crop frames are yielded. Memory is bounded by ``chunk_size``.
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    x_d = motion_mod.driving_keypoints(motion.to(models.device), portrait.kp_info, relative=relative)
    chunks = render_mod.render_frames(
        models.warping_network, models.spade_decoder, portrait.feature_3d, portrait.x_s, x_d,
        chunk_size=chunk_size, dtype=models.dtype, callback=callback,
    )
    for chunk in chunks:
        if paste_back:
            chunk = face.paste_back(chunk, portrait.photo, portrait.crop, portrait.paste_mask)
        yield chunk


def render(
    models: KDTalkerModels,
    portrait: Portrait,
    motion: motion_mod.Motion,
    *,
    chunk_size: int = 8,
    paste_back: bool = True,
    relative: bool = False,
    callback: ProgressCallback | None = None,
) -> RenderResult:
    """Render every frame into one CPU tensor (ComfyUI IMAGE layout (T,H,W,3))."""
    parts = [
        c.float().cpu()
        for c in iter_render(models, portrait, motion, chunk_size=chunk_size, paste_back=paste_back,
                             relative=relative, callback=callback)
    ]
    frames = torch.cat(parts, 0)
    if paste_back:
        mask = portrait.paste_mask.float().cpu()
    else:
        mask = torch.ones(frames.shape[1:3])
    return RenderResult(frames=frames, mask=mask, fps=motion.fps)


def generate(
    models: KDTalkerModels,
    image: Any,
    waveform: Any,
    sample_rate: int,
    *,
    fps: float = 25.0,
    seed: int = 0,
    steps: int = 50,
    smoothing: float = 1.0,
    chunk_size: int = 8,
    paste_back: bool = True,
    face_index: int = 0,
    callback: ProgressCallback | None = None,
) -> RenderResult:
    """Photo + speech -> frames, in one call (portrait, audio, motion, render)."""
    audio = encode_audio(models, waveform, sample_rate, fps=fps)
    portrait = prepare_portrait(models, image, face_index=face_index)
    motion = sample_motion(models, portrait, audio, seed=seed, steps=steps, smoothing=smoothing)
    return render(models, portrait, motion, chunk_size=chunk_size, paste_back=paste_back, callback=callback)
