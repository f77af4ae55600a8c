"""Several faces in one photo: each face talks with its own speech track (or a shared one) and its
own seed; all are rendered and pasted back into one video.

Per face ``k`` (the jobs' order is the paste order, later faces on top):

1. :func:`~kdtalker_core.pipeline.prepare_portrait` with its ``face_index`` (counted in the
   options' ``face_order`` among the *trusted* detections, see :func:`kdtalker_core.face.trusted_faces`);
2. its speech, silence-padded at the end to the longest track, -> Wav2Lip features at the model's
   25 fps -> :func:`~kdtalker_core.pipeline.sample_motion` with seed ``seed + k`` (unless given) ->
   :func:`~kdtalker_core.silence.calm_silences_from_audio` with ``idle_strength`` (1: where the
   face's own track is silent its mouth closes to the photo's and its head settles) -> resampled to
   the output fps;
3. frame ``t`` of the video = the photo with every face's rendered crop blended in, in order, each
   through its own feathered paste mask over what is already there (``canvas + m_k (face_k - canvas)``).
   Photo pixels outside every mask are copied bit for bit in every frame.

Rendering is streamed: every face renders the same chunk of frames, the chunk is composited and
handed on (:func:`iter_compose`), so memory does not grow with the clip. :func:`run` mirrors
:func:`kdtalker_core.pipeline.run` (stages, sinks such as :class:`kdtalker_core.video.Mp4Writer`);
:func:`read_inputs` checks a photo and speech files in seconds, before any model is loaded.

The soundtrack is the sum of the distinct tracks (a track shared by several faces counts once),
scaled down only if the sum would clip.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio as audio_mod
from . import face, pipeline
from .errors import AudioError, InputError
from .motion import Motion
from .options import DEFAULTS, MODEL_FPS, GenerateOptions
from .retime import resample_motion
from .silence import calm_silences_from_audio

__all__ = ["FaceTake", "MultiInputs", "MultiResult", "check_inputs", "composite_mask", "face_motion",
           "hold_to_length", "iter_compose", "mix_tracks", "pad_tracks", "read_inputs", "run"]

SPEECH_RATE = pipeline.SPEECH_RATE


@dataclass
class FaceTake:
    """One face of the photo, ready to render: its portrait and its motion (all takes equally long)."""

    portrait: pipeline.Portrait
    motion: Motion


def pad_tracks(tracks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """(N_k,) float 16 kHz mono tracks -> the same tracks silence-padded at the end to the longest.

    A track given several times (the same tensor object) stays one object, so :func:`mix_tracks`
    counts it once.
    """
    if not tracks:
        raise InputError("several faces need at least one speech track")
    n = max(int(t.shape[-1]) for t in tracks)
    padded: dict[int, torch.Tensor] = {}
    for t in tracks:
        if id(t) not in padded:
            padded[id(t)] = torch.nn.functional.pad(t.float().reshape(-1), (0, n - int(t.shape[-1])))
    return [padded[id(t)] for t in tracks]


def mix_tracks(tracks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The soundtrack of several equally long (N,) tracks: the sum of the distinct ones (by object),
    divided by its peak when that exceeds 1 -> (N,) float32."""
    distinct = list({id(t): t for t in tracks}.values())
    mix = torch.stack([t.float().reshape(-1) for t in distinct]).sum(0)
    peak = float(mix.abs().max()) if mix.numel() else 0.0
    return mix / peak if peak > 1.0 else mix


def face_motion(
    models: pipeline.KDTalkerModels,
    portrait: pipeline.Portrait,
    speech_16k: torch.Tensor,
    options: GenerateOptions = DEFAULTS,
    *,
    seed: int | None = None,
    idle_strength: float = 1.0,
    callback: pipeline.ProgressCallback | None = None,
) -> Motion:
    """One face's motion from its own (already trimmed, padded) 16 kHz mono speech ``(N,)``.

    Sampled at the model's 25 fps with ``seed`` (default ``options.seed``), calmed where the track is
    silent (``idle_strength`` in [0, 1]; the neutral mouth is the photo's own expression), then
    resampled to ``options.fps``. Returns (T, 70) motion at ``options.fps``.
    """
    audio = pipeline.encode_audio(models, speech_16k, SPEECH_RATE, fps=MODEL_FPS)
    motion = pipeline.sample_motion(models, portrait, audio, seed=options.seed if seed is None else seed,
                                    steps=options.steps, eta=options.eta, smoothing=options.smoothing,
                                    callback=callback)
    if idle_strength > 0:
        motion = calm_silences_from_audio(motion, audio.waveform_16k, idle_strength,
                                          neutral_exp=portrait.kp_info["exp"].reshape(-1))
    if options.fps != motion.fps:
        motion = resample_motion(motion, options.fps)
    return motion


def composite_mask(portraits: Sequence[pipeline.Portrait]) -> torch.Tensor:
    """(H, W) float32 CPU: where any face is pasted (the pixel-wise maximum of the paste masks)."""
    return torch.stack([p.paste_mask.float().cpu() for p in portraits]).amax(0)


def hold_to_length(motion: Motion, num_frames: int) -> Motion:
    """``motion`` cut to ``num_frames`` frames, or extended by holding its last frame (a face whose motion
    ended stays still; for a natural idle face give it speech padded with silence instead)."""
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    t = motion.num_frames
    if t == num_frames:
        return motion
    if t > num_frames:
        return motion.with_data(motion.data[:num_frames])
    return motion.with_data(torch.cat([motion.data, motion.data[-1:].expand(num_frames - t, -1)]))


def iter_compose(
    models: pipeline.KDTalkerModels,
    takes: Sequence[FaceTake],
    *,
    chunk_size: int = DEFAULTS.chunk_size,
    photo: torch.Tensor | None = None,
    callback: pipeline.ProgressCallback | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the composited video chunk by chunk: (n, H, W, 3) float [0, 1] on the models' device.

    Every take renders the same ``chunk_size`` frames (raw 512x512 crops, :func:`pipeline.iter_render`),
    which are blended into the photo in the takes' order: the first exactly as
    :func:`kdtalker_core.face.paste_back` does for one face, each next one over the result through its
    own mask. Pixels where every mask is 0 are the photo's, bit for bit. ``photo``: (H, W, 3) float
    [0, 1] to paste into, of the portraits' photo size (default: the first portrait's photo).
    ``callback(done, total)`` counts frames.
    """
    if not takes:
        raise InputError("compose needs at least one face (portrait + motion)")
    hw = tuple(takes[0].portrait.photo.shape[:2])
    if photo is None:
        photo = takes[0].portrait.photo
    photo = photo.to(takes[0].portrait.photo.device, torch.float32)
    if photo.ndim != 3 or tuple(photo.shape) != (*hw, 3):
        raise InputError(f"the photo is {tuple(photo.shape)}, the faces were prepared from a {hw[1]}x{hw[0]} photo: "
                         "paste into the photo the portraits were prepared from")
    total = takes[0].motion.num_frames
    for k, take in enumerate(takes):
        if take.motion.num_frames != total:
            raise InputError(f"face {k}'s motion has {take.motion.num_frames} frames, face 0's {total}: give every "
                             "face a motion of the same length (see hold_to_length)")
        if tuple(take.portrait.photo.shape[:2]) != hw:
            raise InputError(f"face {k} was prepared from a photo of another size; prepare every face from the "
                             "same photo")
    streams = [pipeline.iter_render(models, t.portrait, t.motion, chunk_size=chunk_size, paste_back=False)
               for t in takes]
    # a hard (unfeathered) footprint mask: paste_back then returns the warped face itself there
    footprints = [face.make_paste_mask(t.portrait.crop, tuple(photo.shape[:2]), feather=0.0, device=photo.device)
                  for t in takes]
    done = 0
    for chunks in zip(*streams):
        canvas = face.paste_back(chunks[0], photo, takes[0].portrait.crop, takes[0].portrait.paste_mask)
        for take, raw, hard in zip(takes[1:], chunks[1:], footprints[1:]):
            warped = face.paste_back(raw, photo, take.portrait.crop, hard)
            m = take.portrait.paste_mask.to(device=canvas.device, dtype=canvas.dtype)[None, :, :, None]
            canvas = torch.where(m > 0, canvas + m * (warped.to(canvas.dtype) - canvas), canvas)
        done += int(canvas.shape[0])
        if callback is not None:
            callback(done, total)
        yield canvas


# --------------------------------------------------------------------------- one job, end to end


@dataclass
class MultiInputs:
    """A checked several-faces job (made without models, :func:`check_inputs`).

    photo (H, W, 3) uint8; crops: one per face, in paste order; speeches: one (N,) float32 16 kHz mono
    track per face, trimmed by ``options`` (the same tensor where faces share a track); seeds: one per
    face; options: the shared settings (``face_index`` unused).
    """

    photo: np.ndarray
    crops: list[face.PortraitCrop]
    speeches: list[torch.Tensor]
    seeds: list[int]
    options: GenerateOptions
    image_name: str = "image"

    @property
    def num_frames(self) -> int:
        """Video frames at ``options.fps`` (the longest track decides)."""
        return audio_mod.num_video_frames(max(s.shape[0] for s in self.speeches), self.options.fps)


def _pair(face_indices: Sequence[int], tracks: Sequence[Any]) -> list[Any]:
    """One track per face: a single track is shared, otherwise the counts must match."""
    if not face_indices:
        raise InputError("give at least one face index")
    if len(tracks) == 1:
        return [tracks[0]] * len(face_indices)
    if len(tracks) != len(face_indices):
        raise InputError(f"{len(face_indices)} face indices but {len(tracks)} audio tracks: give one audio per "
                         "face (in the same order), or a single audio shared by every face")
    return list(tracks)


def check_inputs(
    image: Any,
    tracks: Sequence[tuple[Any, int]],
    face_indices: Sequence[int],
    options: GenerateOptions = DEFAULTS,
    *,
    seeds: Sequence[int] | None = None,
    image_name: str = "image",
) -> MultiInputs:
    """Check a photo, its faces and their speech without any model.

    ``tracks``: (waveform, sample_rate) pairs (waveform (N,), (C, N) or (1, C, N)); one per face, or one
    shared by all. ``face_indices``: distinct faces counted in ``options.face_order``. ``seeds``: one
    per face (default ``options.seed + k``). Each track is trimmed by ``options.start_seconds`` /
    ``duration_seconds``. Raises FaceError / AudioError / InputError.
    """
    options.validate()
    if not options.paste_back:
        raise InputError("several faces are composited into the photo: paste_back must be on")
    paired = _pair(face_indices, tracks)
    if len(set(face_indices)) != len(face_indices):
        raise InputError(f"face indices {list(face_indices)} repeat a face; give each face once")
    photo = face.to_rgb_uint8(image, image_name)
    faces = face.detect_faces(photo, name=image_name)
    crops = []
    for idx in face_indices:
        chosen = face.choose_face(faces, int(idx), options.face_order, name=image_name)  # type: ignore[arg-type]
        crops.append(face.crop_portrait(photo, face=chosen, mode=options.crop_mode, name=image_name))  # type: ignore[arg-type]
    trimmed: dict[int, torch.Tensor] = {}
    for wav, rate in paired:
        if id(wav) not in trimmed:
            trimmed[id(wav)] = pipeline.trim_speech(wav, rate, options.start_seconds,
                                                    options.duration_seconds).float().cpu()
    speeches = [trimmed[id(wav)] for wav, _ in paired]
    if seeds is None:
        seeds = [options.seed + k for k in range(len(face_indices))]
    if len(seeds) != len(face_indices):
        raise InputError(f"{len(seeds)} seeds for {len(face_indices)} faces: give one seed per face")
    inputs = MultiInputs(photo, crops, speeches, [int(s) for s in seeds], options, image_name)
    if inputs.num_frames < 1:
        raise AudioError("every speech track is shorter than one video frame: give more audio")
    return inputs


def read_inputs(
    image_path: str | Path,
    audio_paths: Sequence[str | Path],
    face_indices: Sequence[int],
    options: GenerateOptions = DEFAULTS,
    *,
    seeds: Sequence[int] | None = None,
) -> MultiInputs:
    """:func:`check_inputs` for files (one audio file per face, or one shared). Errors name the file."""
    from .image_io import read_image

    photo = read_image(image_path)
    loaded: dict[str, tuple[torch.Tensor, int]] = {}
    for p in audio_paths:
        if str(p) not in loaded:
            loaded[str(p)] = audio_mod.load_audio_file(p, fps=options.fps)
    tracks = [loaded[str(p)] for p in audio_paths]
    return check_inputs(photo, tracks, face_indices, options, seeds=seeds, image_name=str(image_path))


@dataclass
class MultiResult:
    """What :func:`run` made: frames (T, H, W, 3) float32 CPU or None (sent to a sink), num_frames, fps,
    mask (H, W) where any face is pasted, speech (N,) the soundtrack, portraits and motions one per face
    (paste order), precision, seconds per stage."""

    frames: torch.Tensor | None
    num_frames: int
    fps: float
    mask: torch.Tensor
    speech: torch.Tensor
    motions: list[Motion]
    portraits: list[pipeline.Portrait]
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)


def run(
    models: pipeline.KDTalkerModels,
    inputs: MultiInputs,
    *,
    on_stage: pipeline.StageCallback | None = None,
    sink: pipeline.FrameSink | None = None,
    idle_strength: float = 1.0,
) -> MultiResult:
    """Every face of a checked job: portraits, motions (own track, own seed, idle where silent),
    then the composited frames streamed into ``sink`` (default: collected into ``result.frames``).

    Stages as :func:`pipeline.run` (``audio`` covers padding and mixing the tracks; ``motion`` counts
    denoiser steps over all faces).
    """
    opts = inputs.options
    clock = pipeline.StageClock(on_stage)
    report, timed = clock.report, clock.timed

    tracks = timed("audio", 1, lambda: pad_tracks(inputs.speeches))
    portraits = timed("portrait", len(inputs.crops), lambda: [
        pipeline.prepare_portrait(models, inputs.photo, crop=c, name=inputs.image_name) for c in inputs.crops])
    per_face = pipeline.motion_total(audio_mod.num_video_frames(tracks[0].shape[0], MODEL_FPS), opts.steps)
    n_steps = per_face * len(portraits)

    def motions() -> list[Motion]:
        out = []
        for k, (p, track, seed) in enumerate(zip(portraits, tracks, inputs.seeds)):
            def cb(done: int, total: int, k: int = k) -> None:
                if k * per_face + done < n_steps:
                    report("motion", k * per_face + done, n_steps)
            out.append(face_motion(models, p, track, opts, seed=seed, idle_strength=idle_strength, callback=cb))
        return out

    face_motions = timed("motion", n_steps, motions)
    total = min(m.num_frames for m in face_motions)
    face_motions = [m if m.num_frames == total else m.with_data(m.data[:total]) for m in face_motions]
    mix = pipeline.speech_for_frames(mix_tracks(tracks), total, float(opts.fps))

    takes = [FaceTake(p, m) for p, m in zip(portraits, face_motions)]
    chunks = iter_compose(models, takes, chunk_size=opts.chunk_size)
    frames, _ = pipeline.stream_frames(chunks, total, float(opts.fps), mix, sink, clock)
    return MultiResult(frames=frames, num_frames=total, fps=float(opts.fps), mask=composite_mask(portraits),
                       speech=mix, motions=face_motions, portraits=portraits,
                       precision=models.precision, seconds=clock.seconds)
