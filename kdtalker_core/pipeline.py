"""End-to-end composition: photo + speech -> talking-portrait frames.

This is the library's public API; the CLI, the ComfyUI nodes and batch jobs are thin adapters
over it. One call does everything::

    models = load_models("models")                             # every network, precision "auto"
    inputs = read_inputs("photo.jpg", "speech.wav", options)   # checked in seconds, before loading
    result = run(models, inputs, on_stage=print, sink=video.Mp4Writer("talk.mp4"))

(:func:`generate` = :func:`check_inputs` + :func:`run` for in-memory photo and waveform.) The
stages, also usable one by one (the step-by-step nodes)::

    portrait = prepare_portrait(models, photo)           # crop, f_s, source keypoints, paste mask
    audio = encode_audio(models, waveform, sample_rate)  # (T,512) Wav2Lip features at 25 fps
    motion = sample_motion(models, portrait, audio)      # (T,70) motion, DDIM + Kalman
    result = render(models, portrait, motion)            # (T,H,W,3) frames pasted into the photo

:func:`run` samples the motion at :data:`MODEL_FPS` (the rate the model was trained at) and then,
as ``options`` ask, in this order: takes the head pose from a driving video
(:mod:`~kdtalker_core.driving`), calms the pauses of the speech (:mod:`~kdtalker_core.silence`) and
resamples the motion to the output frame rate (:mod:`~kdtalker_core.retime`); blinks, eye / mouth
openness and stitching act on the driving keypoints at render time (:mod:`~kdtalker_core.retarget`).

Everything between the crop and the frames stays on ``models.device``. Motion is generated whole
(70 floats a frame); rendering runs in chunks, and with a sink (or :func:`iter_render`) frames
leave as they are made, so memory does not grow with the audio length.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import audio as audio_mod
from . import face, retarget, retime, silence, weights
from . import motion as motion_mod
from . import render as render_mod
from .attention import set_attention_backend
from .errors import InputError

# Re-exported: the job inputs and the stage / sink types are part of this module's public API.
from .inputs import SPEECH_RATE, Inputs, check_inputs, output_frames, read_inputs, speech_for_frames, trim_speech  # noqa: F401
from .keypoints import get_kp_info, transform_keypoint
from .options import DEFAULTS, MODEL_DEFAULTS, MODEL_FPS, GenerateOptions
from .precision import PRECISIONS, native_bf16, resolve_precision
from .stages import POSE_STAGE, STAGES, FrameCollector, FrameSink, StageCallback, StageClock, stream_frames  # noqa: F401

#: ``callback(done, total)`` of one long stage.
ProgressCallback = Callable[[int, int], None]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class KDTalkerModels:
    """Every network of the pipeline, in eval mode on one device.

    Names follow the paper: F = appearance_extractor, M = motion_extractor, W = warping_network,
    G = spade_decoder, S = stitching (optional; KDTalker renders without it). ``retarget_eye`` /
    ``retarget_lip``: LivePortrait's eye and lip retargeting MLPs (optional, from the same file as S;
    used by blinks and eye / mouth openness, see :mod:`kdtalker_core.retarget`).
    """

    appearance_extractor: torch.nn.Module
    motion_extractor: torch.nn.Module
    warping_network: torch.nn.Module
    spade_decoder: torch.nn.Module
    audio_encoder: torch.nn.Module
    denoiser: torch.nn.Module
    norm: motion_mod.NormStats
    stitching: torch.nn.Module | None = None
    retarget_eye: torch.nn.Module | None = None
    retarget_lip: torch.nn.Module | None = None
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
        for name in ("stitching", "retarget_eye", "retarget_lip"):
            if getattr(self, name) is not None:
                mods[name] = getattr(self, name)
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
    device: str | torch.device = MODEL_DEFAULTS.device,
    precision: str = MODEL_DEFAULTS.precision,
    attention: str = MODEL_DEFAULTS.attention,
    use_ema: bool = MODEL_DEFAULTS.use_ema,
) -> KDTalkerModels:
    """Find, validate and load every checkpoint; return the networks on ``device`` in eval mode.

    ``models_dir`` holds ``kdtalker/`` and ``liveportrait/`` (ComfyUI's models folder works); when
    None, ``$KDTALKER_MODELS_DIR`` or ``./models``. ``paths`` overrides discovery. Missing or wrong
    files raise :class:`~kdtalker_core.errors.ModelFileError` naming every place searched.
    ``precision`` follows :mod:`kdtalker_core.precision` (``auto``: bf16 where the device multiplies
    bf16 natively, else fp32).
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
    stitching = retarget_eye = retarget_lip = None
    groups = lp.get("stitching_retargeting_module")
    if groups is not None:
        file = lp.files["stitching_retargeting_module"]
        stitching = load("retarget_shoulder", groups["retarget_shoulder"], file, "LivePortrait stitching (S)")
        retarget_eye = load("retarget_eye", groups["retarget_eye"], file, "LivePortrait eye retargeting MLP")
        retarget_lip = load("retarget_mouth", groups["retarget_mouth"], file, "LivePortrait lip retargeting MLP")

    models = KDTalkerModels(
        appearance_extractor=appearance,
        motion_extractor=motion_extractor,
        warping_network=warping,
        spade_decoder=spade,
        audio_encoder=audio_encoder,
        denoiser=denoiser,
        norm=motion_mod.NormStats.from_dict(bundle.norm),
        stitching=stitching,
        retarget_eye=retarget_eye,
        retarget_lip=retarget_lip,
        device=dev,
        precision=precision,
        attention_backend=attention,
    )
    models = models.to(dev)
    _prepare_networks(models)
    # The unpickled checkpoint objects (KDTalker.pth's state dicts, its zip index and cfg) sit in
    # reference cycles, so without a collection here ~700 MB of them stay resident until Python's
    # cyclic GC happens to run, e.g. through the whole first render (measured: fp32 peak RSS
    # 2.70 -> 1.95 GB in the benchmark).
    del bundle, lp, groups
    gc.collect()
    return models


def _prepare_networks(models: KDTalkerModels) -> None:
    """Freshly loaded fp32 networks on ``models.device`` -> eval mode, no gradients, the dtypes
    ``models.precision`` wants, cast once here (never per call).

    Rendering (W, G): weights in the compute dtype, channels-last where that is faster
    (:func:`kdtalker_core.render.prepare_networks`). The denoiser computes in its parameters' dtype
    (the sampler keeps x_t and the DDIM arithmetic in fp32): reduced on CUDA, and to bf16 on CPUs
    that multiply bf16 natively (its eps step measured ~4x faster there). F, M and the audio encoder
    run once per portrait / clip and stay fp32.
    """
    for m in models.modules().values():
        m.eval().requires_grad_(False)
    render_mod.prepare_networks(models.warping_network, models.spade_decoder, models.dtype, models.device)
    reduced = models.precision != "fp32"
    if reduced and (models.device.type == "cuda" or (models.precision == "bf16" and native_bf16(models.device))):
        models.denoiser.to(PRECISIONS[models.precision])


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
    face_index: int = DEFAULTS.face_index,
    order: str = DEFAULTS.face_order,
    crop_mode: str = DEFAULTS.crop_mode,
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
    photo_t = torch.tensor(photo, device=dev).float().div(255.0)  # a copy: the array may be read-only
    mask = face.make_paste_mask(crop, photo.shape[:2], device=dev)
    return Portrait(photo_t, crop, source, feature_3d, kp_info, x_s, mask)



def portrait_of(models: KDTalkerModels, inputs: Inputs) -> Portrait:
    """The :class:`Portrait` of checked inputs (their face crop is reused, not detected again)."""
    return prepare_portrait(models, inputs.photo, crop=inputs.crop, name=inputs.image_name)

# --------------------------------------------------------------------------- audio


@dataclass
class AudioFeatures:
    """Per-frame Wav2Lip features: features (T,512) on the device at ``fps`` (the model's 25),
    waveform_16k the audio they cover; ``output_fps``: the frame rate :func:`sample_motion` resamples
    its motion to (None: ``fps``)."""

    features: torch.Tensor
    fps: float
    waveform_16k: torch.Tensor
    output_fps: float | None = None

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])


@torch.inference_mode()
def encode_audio(
    models: KDTalkerModels,
    waveform: Any,
    sample_rate: int,
    *,
    fps: float = DEFAULTS.fps,
    start_seconds: float = DEFAULTS.start_seconds,
    duration_seconds: float | None = DEFAULTS.duration_seconds,
) -> AudioFeatures:
    """Speech (any rate, any channel count) -> (T,512) features at :data:`MODEL_FPS` (25 a second).

    The motion model was trained on 25 fps features, so they are always made at that rate; ``fps``
    is the frame rate of the motion :func:`sample_motion` makes from them (it resamples its 25 fps
    motion, :func:`kdtalker_core.retime.resample_motion`). ``waveform`` is (N,), (C,N) or ComfyUI's
    (1,C,N) float. ``start_seconds``/``duration_seconds``
    trim the speech first (:func:`trim_speech`). Raises AudioError for empty, non-finite or
    sub-frame audio.
    """
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    wav = trim_speech(waveform, sample_rate, start_seconds, duration_seconds)
    windows, wav_cropped = audio_mod.audio_to_mel_windows(wav.to(models.device), SPEECH_RATE, fps=MODEL_FPS)
    features = models.audio_encoder.encode_in_chunks(windows)
    return AudioFeatures(features=features, fps=MODEL_FPS, waveform_16k=wav_cropped.float().cpu(),
                         output_fps=float(fps))


# --------------------------------------------------------------------------- motion


def sample_motion(
    models: KDTalkerModels,
    portrait: Portrait,
    audio: AudioFeatures,
    *,
    seed: int = DEFAULTS.seed,
    steps: int = DEFAULTS.steps,
    eta: float = DEFAULTS.eta,
    smoothing: float = DEFAULTS.smoothing,
    callback: ProgressCallback | None = None,
) -> motion_mod.Motion:
    """Generate (T,70) motion with the windowed DDIM sampler, denormalise, Kalman-smooth; then
    resample it to ``audio.output_fps`` when that differs from the features' rate.

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
        motion = motion_mod.smooth_motion(motion, strength=smoothing)
    out_fps = audio.output_fps or audio.fps
    if abs(out_fps - motion.fps) > 1e-9 * motion.fps:
        motion = retime.resample_motion(motion, out_fps)
    return motion


# --------------------------------------------------------------------------- rendering


@dataclass
class RenderResult:
    """Frames (T,H,W,3) float [0,1] on the CPU, the paste mask (H,W), and the frame rate."""

    frames: torch.Tensor
    mask: torch.Tensor
    fps: float


def driving_keypoints(
    models: KDTalkerModels,
    portrait: Portrait,
    motion: motion_mod.Motion,
    *,
    relative: bool = False,
    motion_scale: bool = False,
    performance: retarget.PerformanceOptions | None = None,
) -> torch.Tensor:
    """The driving keypoints ``x_d (T,21,3)`` the renderer gets, on the models' device: the motion's
    keypoints (:func:`kdtalker_core.motion.driving_keypoints`; ``relative``, ``motion_scale`` as
    there) with ``performance`` (blinks, eye / mouth openness, stitching) applied by
    :func:`kdtalker_core.retarget.apply_to_portrait`. None or default ``performance`` changes nothing."""
    on_device = motion.to(models.device)
    x_d = motion_mod.driving_keypoints(on_device, portrait.kp_info, relative=relative, motion_scale=motion_scale)
    return retarget.apply_to_portrait(x_d, models, portrait, on_device, performance)


def _frame_slice(num_frames: int, frames: slice | None) -> tuple[int, int]:
    """``frames`` (a step-1 slice, None = all) of a ``num_frames`` clip -> (start, stop), checked."""
    if frames is None:
        return 0, num_frames
    start, stop, step = frames.indices(num_frames)
    if step != 1 or start >= stop:
        raise InputError(f"the frame range {frames.start}..{frames.stop} selects no frames of the "
                         f"{num_frames}-frame motion")
    return start, stop


def iter_render(
    models: KDTalkerModels,
    portrait: Portrait,
    motion: motion_mod.Motion,
    *,
    chunk_size: int = DEFAULTS.chunk_size,
    paste_back: bool = DEFAULTS.paste_back,
    relative: bool = False,
    motion_scale: bool = False,
    performance: retarget.PerformanceOptions | None = None,
    frames: slice | None = None,
    callback: ProgressCallback | None = None,
) -> Iterator[torch.Tensor]:
    """Yield rendered frames chunk by chunk: (n,H,W,3) float [0,1] on the device.

    With ``paste_back`` the 512x512 face is blended into the original photo (H,W); otherwise the
    raw 512x512 crop frames are yielded. Memory is bounded by ``chunk_size``. ``performance``:
    blinks, eye / mouth openness and stitching (:class:`~kdtalker_core.retarget.PerformanceOptions`,
    None = off); ``relative`` / ``motion_scale``: see :func:`kdtalker_core.motion.driving_transform`.
    ``frames``: render only this range of the motion (e.g. ``slice(100, 200)``); the keypoints
    (blink timing included) are computed over the whole motion, so ranges joined in order equal one
    pass. ``callback(done, total)`` counts frames, after each chunk is rendered and before it is yielded.
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    start, stop = _frame_slice(motion.num_frames, frames)
    x_d = driving_keypoints(models, portrait, motion, relative=relative, motion_scale=motion_scale,
                            performance=performance)[start:stop]
    chunks = render_mod.render_frames(
        models.warping_network, models.spade_decoder, portrait.feature_3d, portrait.x_s, x_d,
        chunk_size=chunk_size, dtype=models.dtype, callback=callback,
    )
    for chunk in chunks:
        if paste_back:
            chunk = face.paste_back(chunk, portrait.photo, portrait.crop, portrait.paste_mask)
        yield chunk


def _output_mask(portrait: Portrait, paste_back: bool, frame_hw: tuple[int, int]) -> torch.Tensor:
    """Where the rendered face is in (H,W) output frames: the paste mask, or all ones for the raw crop."""
    return portrait.paste_mask.float().cpu() if paste_back else torch.ones(frame_hw)


def render(
    models: KDTalkerModels,
    portrait: Portrait,
    motion: motion_mod.Motion,
    *,
    chunk_size: int = DEFAULTS.chunk_size,
    paste_back: bool = DEFAULTS.paste_back,
    relative: bool = False,
    motion_scale: bool = False,
    performance: retarget.PerformanceOptions | None = None,
    frames: slice | None = None,
    callback: ProgressCallback | None = None,
) -> RenderResult:
    """Render every frame (or the range ``frames``) into one CPU tensor (ComfyUI IMAGE layout
    (T,H,W,3)); the keywords are those of :func:`iter_render`."""
    collector = FrameCollector()
    for chunk in iter_render(models, portrait, motion, chunk_size=chunk_size, paste_back=paste_back,
                             relative=relative, motion_scale=motion_scale, performance=performance,
                             frames=frames, callback=callback):
        collector.write(chunk)
    frames = collector.finish()
    return RenderResult(frames=frames, mask=_output_mask(portrait, paste_back, frames.shape[1:3]), fps=motion.fps)


# --------------------------------------------------------------------------- one job, end to end


@dataclass
class GenerateResult:
    """What :func:`run` made.

    frames (T,H,W,3) float32 [0,1] on the CPU, or None when they went to a sink; num_frames T;
    fps; mask (H,W) where the face is in the frames; speech (N,) float32 16 kHz mono covering
    exactly the frames; motion (T,70) at ``fps`` (the one rendered: pose, calming and resampling
    applied); precision the networks ran in; seconds: wall time per stage.
    """

    frames: torch.Tensor | None
    num_frames: int
    fps: float
    mask: torch.Tensor
    speech: torch.Tensor
    motion: motion_mod.Motion
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)


def motion_total(num_frames: int, steps: int) -> int:
    """Denoiser steps :func:`sample_motion` reports for ``num_frames``: one DDIM run per 64-frame window."""
    return math.ceil(num_frames / motion_mod.WINDOW) * steps


def run(models: KDTalkerModels, inputs: Inputs, *, on_stage: StageCallback | None = None,
        sink: FrameSink | None = None, portrait: Portrait | None = None) -> GenerateResult:
    """The whole pipeline for one checked job: audio -> portrait -> motion -> render -> encode.

    The speech is encoded and the motion sampled at :data:`MODEL_FPS` whatever ``options.fps``; the
    motion then gets, as the options ask and in this order, the head pose of ``pose_video`` (the
    video is read in the extra stage :data:`POSE_STAGE`, after "portrait"), calm silences and
    resampling to ``fps`` (``round(duration * fps)`` frames; the speech handed to the sink and
    returned covers exactly those frames). Blinks, eye / mouth openness and stitching are applied
    to the driving keypoints while rendering. Default options give the official output, bit for bit.

    ``on_stage(stage, done, total)`` is called with ``done = 0`` when each stage of :data:`STAGES`
    starts, as it progresses (motion: denoiser steps; render: frames rendered and handed to the
    sink) and with ``done == total`` when it ends; it may raise to cancel. ``sink``: frames stream
    into it chunk by chunk (memory flat in the audio length; ``encode`` is its ``finish``, e.g.
    the mp4 encoder's flush and mux); without one they are collected into ``result.frames``.
    ``portrait``: this photo's :func:`prepare_portrait` (same ``inputs.photo``/``crop``) made
    earlier, e.g. kept by a batch for several jobs, used instead of preparing it again.
    """
    opts = inputs.options
    clock = StageClock(on_stage)
    report, timed = clock.report, clock.timed

    audio = timed("audio", 1, lambda: encode_audio(models, inputs.speech, SPEECH_RATE, fps=MODEL_FPS))
    prepared = portrait
    portrait = timed("portrait", 1, lambda: prepared if prepared is not None else portrait_of(models, inputs))
    pose = None
    if opts.pose_video is not None:
        pose = timed(POSE_STAGE, 1, lambda: pose_from_video(models, portrait, opts, audio.num_frames / MODEL_FPS))
    n_steps = motion_total(audio.num_frames, opts.steps)

    def make_motion() -> motion_mod.Motion:
        sampled = sample_motion(models, portrait, audio, seed=opts.seed, steps=opts.steps, eta=opts.eta,
                                smoothing=opts.smoothing,
                                callback=lambda done, total: report("motion", done, total) if done < total else None)
        return shape_motion(sampled, opts, pose=pose, speech=audio.waveform_16k, portrait=portrait)

    motion = timed("motion", n_steps, make_motion)
    speech = speech_for_frames(audio.waveform_16k, motion.num_frames, motion.fps)

    total = motion.num_frames
    chunks = iter_render(models, portrait, motion, chunk_size=opts.chunk_size, paste_back=opts.paste_back,
                         motion_scale=pose is not None, performance=opts.performance())
    frames, frame_hw = stream_frames(chunks, total, motion.fps, speech, sink, clock)
    return GenerateResult(frames=frames, num_frames=total, fps=motion.fps,
                          mask=_output_mask(portrait, opts.paste_back, frame_hw), speech=speech,
                          motion=motion, precision=models.precision, seconds=clock.seconds)


@torch.inference_mode()
def pose_from_video(models: KDTalkerModels, portrait: Portrait, options: GenerateOptions,
                    seconds: float | None = None) -> motion_mod.Motion:
    """The head motion of ``options.pose_video`` applied to the portrait (``options.pose_mode``;
    :func:`kdtalker_core.driving.extract_video_motion_file`, cropped with ``options.crop_mode``) at
    the video's own frame rate; only the first ``seconds`` of the video are read (None: all)."""
    from . import driving

    if options.pose_video is None:
        raise InputError("no pose video was given")
    video = driving.extract_video_motion_file(models.motion_extractor, options.pose_video, portrait.kp_info,
                                              max_seconds=seconds, mode=options.pose_mode,
                                              crop_mode=options.crop_mode)
    return video.motion


def shape_motion(motion: motion_mod.Motion, options: GenerateOptions, *, pose: motion_mod.Motion | None = None,
                 speech: torch.Tensor | None = None, portrait: Portrait | None = None) -> motion_mod.Motion:
    """The sampled motion (at :data:`MODEL_FPS`) -> the motion to render, in this order:

    1. ``pose`` (from :func:`pose_from_video`; None: keep the audio's head motion): its rotation,
       translation and scale replace the motion's, ``options.pose_expression`` of its expression is
       mixed in, its length fitted by ``options.pose_fit`` (:func:`kdtalker_core.driving.mix_motion`);
    2. ``options.silence_calm > 0``: pauses of ``speech`` (16 kHz mono from the motion's frame 0)
       calmed toward the portrait's own mouth (:func:`kdtalker_core.silence.calm_silences_from_audio`);
    3. ``options.fps`` other than 25: resampled (:func:`kdtalker_core.retime.resample_motion`).

    Default options return ``motion`` itself.
    """
    if pose is not None:
        from .driving import mix_motion

        motion = mix_motion(pose, motion, exp=options.pose_expression, fit=options.pose_fit)
    if options.silence_calm > 0:
        if speech is None:
            raise InputError("calming silences needs the speech the motion was made from")
        neutral = portrait.kp_info["exp"] if portrait is not None else None
        motion = silence.calm_silences_from_audio(motion, speech, options.silence_calm, neutral_exp=neutral)
    if abs(options.fps - motion.fps) > 1e-9 * motion.fps:
        motion = retime.resample_motion(motion, options.fps)
    return motion


def generate(models: KDTalkerModels, image: Any, waveform: Any, sample_rate: int,
             options: GenerateOptions = DEFAULTS, *, image_name: str = "image",
             on_stage: StageCallback | None = None, sink: FrameSink | None = None) -> GenerateResult:
    """Photo + speech -> frames in one call: :func:`check_inputs` then :func:`run`."""
    return run(models, check_inputs(image, waveform, sample_rate, options, image_name=image_name),
               on_stage=on_stage, sink=sink)
