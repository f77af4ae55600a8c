"""A job's inputs, checked before any model loads: the photo's face crop and the trimmed speech.

Bad input (no face, unreadable photo, empty / corrupt / too short audio, a missing pose video) fails
here in seconds, with a message that says what to do; :func:`kdtalker_core.pipeline.run` takes the
:class:`Inputs` this makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio as audio_mod
from . import face, retime
from .errors import AudioError, InputError
from .options import DEFAULTS, MODEL_FPS, GenerateOptions

#: Sample rate of the speech the pipeline works on (and hands to sinks).
SPEECH_RATE = audio_mod.SAMPLE_RATE


def trim_speech(waveform: Any, sample_rate: int, start_seconds: float = 0.0,
                duration_seconds: float | None = None) -> torch.Tensor:
    """Speech (N,), (C,N) or (1,C,N) at any rate -> (M,) float32 16 kHz mono from ``start_seconds``,
    ``duration_seconds`` long (None or <= 0: to the end). The one place audio is trimmed.

    Raises AudioError for empty or non-finite audio and for a start past the end.
    """
    wav = audio_mod.to_mono_16k(waveform, sample_rate)
    start = max(0, int(round(start_seconds * SPEECH_RATE)))
    if start >= wav.shape[0]:
        raise AudioError(f"start {start_seconds:.2f} s is past the end of the audio "
                         f"({wav.shape[0] / SPEECH_RATE:.2f} s)")
    stop = None if duration_seconds is None or duration_seconds <= 0 else start + int(
        round(duration_seconds * SPEECH_RATE))
    return wav[start:stop]


@dataclass
class Inputs:
    """A checked job, made in seconds before any model is loaded (:func:`check_inputs`).

    photo (H,W,3) uint8 RGB; crop: its face crop (reused by :func:`prepare_portrait`); speech (N,)
    float32 16 kHz mono, already trimmed by ``options`` (at least one motion frame, 40 ms, long);
    options: the job's settings; image_name: how messages call the photo.
    """

    photo: np.ndarray
    crop: face.PortraitCrop
    speech: torch.Tensor
    options: GenerateOptions
    image_name: str = "image"

    @property
    def motion_frames(self) -> int:
        """Motion frames the speech gives at :data:`MODEL_FPS` (what the model samples)."""
        return audio_mod.num_video_frames(self.speech.shape[0], MODEL_FPS)

    @property
    def num_frames(self) -> int:
        """Output video frames at ``options.fps``: ``round(motion_frames / 25 * fps)`` (a pose video with
        ``pose_fit="cut"`` shorter than the speech shortens the result further)."""
        return output_frames(self.motion_frames, self.options.fps)


def output_frames(motion_frames: int, fps: float) -> int:
    """Frames at ``fps`` of a motion of ``motion_frames`` frames at :data:`MODEL_FPS` (0 stays 0)."""
    return retime.resampled_length(motion_frames, MODEL_FPS, fps) if motion_frames > 0 else 0


def speech_for_frames(speech: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
    """16 kHz speech ``(N,)`` cut (or padded with silence) to exactly cover ``num_frames`` at ``fps``:
    ``round(num_frames * 16000 / fps)`` samples. Returns ``speech`` itself when it already does."""
    n = int(round(num_frames * SPEECH_RATE / float(fps)))
    if speech.shape[0] == n:
        return speech
    if speech.shape[0] > n:
        return speech[:n]
    return torch.cat([speech, speech.new_zeros(n - speech.shape[0])])


def check_inputs(image: Any, waveform: Any, sample_rate: int, options: GenerateOptions = DEFAULTS, *,
                 image_name: str = "image") -> Inputs:
    """Check a photo and a speech track against ``options`` without any model: find the face, trim
    the speech, make sure it covers a video frame. Raises FaceError / AudioError / InputError.

    ``image``: (H,W,C) or (1,H,W,C) uint8 or float [0,1] array or tensor; ``waveform`` (N,), (C,N)
    or (1,C,N) at ``sample_rate`` Hz.
    """
    options.validate()
    photo = face.to_rgb_uint8(image, image_name)
    crop = face.crop_portrait(photo, face_index=options.face_index, order=options.face_order,
                              mode=options.crop_mode, name=image_name)
    speech = trim_speech(waveform, sample_rate, options.start_seconds, options.duration_seconds)
    inputs = Inputs(photo, crop, speech.float().cpu(), options, image_name)
    if inputs.motion_frames < 1:
        raise AudioError(f"the speech to use is {speech.shape[0] / SPEECH_RATE * 1000:.0f} ms long, shorter than "
                         f"one video frame of the motion model ({1000 / MODEL_FPS:.0f} ms at {MODEL_FPS:g} fps): "
                         "give more audio")
    if options.pose_video is not None and not Path(options.pose_video).is_file():
        raise InputError(f"the pose video {options.pose_video} does not exist: give a video file of a face "
                         "for the head motion, or leave the pose video out")
    return inputs


def read_inputs(image_path: str | Path, audio_path: str | Path, options: GenerateOptions = DEFAULTS) -> Inputs:
    """:func:`check_inputs` for files: any photo :func:`kdtalker_core.image_io.read_image` reads,
    any audio :func:`kdtalker_core.audio.load_audio_file` decodes. Errors name the file."""
    from .image_io import read_image

    photo = read_image(image_path)
    waveform, sample_rate = audio_mod.load_audio_file(audio_path, fps=MODEL_FPS)
    return check_inputs(photo, waveform, sample_rate, options, image_name=str(image_path))
