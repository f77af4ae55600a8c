"""Stand-in for ComfyUI's native VIDEO values (``comfy_api.latest._input`` / ``_input_impl`` / ``_util``).

``VideoInput`` is the abstract VIDEO value; ``VideoFromFile`` is backed by a file on disk (what
LoadVideo returns and what our streaming node returns), ``VideoFromComponents`` by frames + audio in
memory (what CreateVideo returns). Method names and signatures follow ComfyUI 0.33's
``comfy_api/latest/_input/video_types.py``, ``_input_impl/video_types.py`` and ``_util/video_types.py``
(``save_to(..., bit_depth, crf)``, abstract ``as_trimmed``, ``get_bit_depth``, ``VideoComponents.alpha``,
``VideoFromComponents(components, bit_depth=8)``); the file reading is written here with PyAV (only
what the tests need: metadata, decoding, copying; no trimming, no transcoding).
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import IO, Any

import torch


class VideoContainer(str, Enum):
    AUTO = "auto"
    MP4 = "mp4"

    @classmethod
    def as_input(cls) -> list[str]:
        return [member.value for member in cls]

    @classmethod
    def get_extension(cls, value: str | VideoContainer) -> str:
        value = cls(value)
        return "mp4" if value in (cls.AUTO, cls.MP4) else value.value


class VideoCodec(str, Enum):
    AUTO = "auto"
    H264 = "h264"

    @classmethod
    def as_input(cls) -> list[str]:
        return [member.value for member in cls]


@dataclass
class VideoComponents:
    """images (T,H,W,3) float [0,1]; frame_rate; audio AUDIO dict or None; metadata; alpha MASK or None."""

    images: torch.Tensor
    frame_rate: Fraction
    audio: dict[str, Any] | None = None
    metadata: dict | None = None
    alpha: torch.Tensor | None = None


class VideoInput(ABC):
    """The value on a VIDEO socket."""

    @abstractmethod
    def get_components(self) -> VideoComponents: ...

    @abstractmethod
    def save_to(self, path: str | IO[bytes], format: VideoContainer = VideoContainer.AUTO,
                codec: VideoCodec = VideoCodec.AUTO, metadata: dict | None = None, bit_depth: int | None = None,
                crf: float | None = None) -> None: ...

    @abstractmethod
    def as_trimmed(self, start_time: float | None = None, duration: float | None = None,
                   strict_duration: bool = False) -> VideoInput | None: ...

    def get_active_trim_window(self) -> tuple[float, float]:
        return 0.0, 0.0

    def get_bit_depth(self) -> int:
        return 8

    def get_stream_source(self) -> str | io.BytesIO:
        buffer = io.BytesIO()
        self.save_to(buffer)
        buffer.seek(0)
        return buffer

    def get_dimensions(self) -> tuple[int, int]:
        images = self.get_components().images
        return images.shape[2], images.shape[1]

    def get_duration(self) -> float:
        components = self.get_components()
        return float(components.images.shape[0] / components.frame_rate)

    def get_frame_count(self) -> int:
        return int(self.get_components().images.shape[0])

    def get_frame_rate(self) -> Fraction:
        return self.get_components().frame_rate


class VideoFromFile(VideoInput):
    """``VideoFromFile(file, *, start_time=0, duration=0)``: a video file (path or BytesIO)."""

    def __init__(self, file: str | io.BytesIO, *, start_time: float = 0, duration: float = 0):
        self.__file = file
        self.__start_time = start_time
        self.__duration = duration

    def get_stream_source(self) -> str | io.BytesIO:
        if isinstance(self.__file, io.BytesIO):
            self.__file.seek(0)
        return self.__file

    def _open(self):
        import av

        return av.open(self.get_stream_source(), mode="r")

    def get_dimensions(self) -> tuple[int, int]:
        with self._open() as container:
            for stream in container.streams.video:
                return stream.width, stream.height
        raise ValueError(f"No video stream found in file '{self.__file}'")

    def get_frame_rate(self) -> Fraction:
        with self._open() as container:
            return Fraction(container.streams.video[0].average_rate or 1)

    def get_frame_count(self) -> int:
        with self._open() as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for _ in container.decode(stream))

    def get_duration(self) -> float:
        import av

        with self._open() as container:
            if container.duration is not None:
                return float(container.duration / av.time_base)
        return self.get_frame_count() / float(self.get_frame_rate())

    def get_container_format(self) -> str:
        with self._open() as container:
            return container.format.name

    def get_components(self) -> VideoComponents:
        import av
        import numpy as np

        frames, audio, rate, layout_channels = [], [], 0, 1
        with self._open() as container:
            video = container.streams.video[0]
            fps = Fraction(video.average_rate or 1)
            streams = [video, *container.streams.audio[:1]]
            for frame in container.decode(*streams):
                if isinstance(frame, av.VideoFrame):
                    frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                else:
                    data = frame.to_ndarray()
                    layout_channels = frame.layout.nb_channels
                    if not frame.format.is_planar:
                        data = data.reshape(-1, layout_channels).T
                    audio.append(data.astype(np.float32))
                    rate = frame.sample_rate
        images = torch.stack(frames).float().div(255.0)
        audio_dict = None
        if audio:
            audio_dict = {"waveform": torch.from_numpy(np.concatenate(audio, axis=1))[None], "sample_rate": rate}
        return VideoComponents(images=images, frame_rate=fps, audio=audio_dict)

    def get_active_trim_window(self) -> tuple[float, float]:
        return float(self.__start_time), float(self.__duration)

    def get_bit_depth(self) -> int:
        with self._open() as container:
            stream = container.streams.video[0] if container.streams.video else None
            if stream is None or stream.format is None or not stream.format.components:
                return 8
            return max(c.bits for c in stream.format.components)

    def as_trimmed(self, start_time: float = 0, duration: float = 0, strict_duration: bool = True
                   ) -> VideoInput | None:
        raise NotImplementedError("the ComfyUI stand-in does not trim videos")

    def save_to(self, path: str | IO[bytes], format: VideoContainer = VideoContainer.AUTO,
                codec: VideoCodec = VideoCodec.AUTO, metadata: dict | None = None, bit_depth: int | None = None,
                crf: float | None = None) -> None:
        """Copy the file (ComfyUI remuxes the same streams when nothing asks for a transcode)."""
        if crf is not None or bit_depth not in (None, self.get_bit_depth()) or self.__start_time or self.__duration:
            raise NotImplementedError("the ComfyUI stand-in does not transcode videos")
        source = self.get_stream_source()
        if isinstance(source, io.BytesIO):
            data = source.getvalue()
        else:
            with open(source, "rb") as f:
                data = f.read()
        if isinstance(path, (str, os.PathLike)):
            with open(path, "wb") as f:
                f.write(data)
        else:
            path.write(data)


class VideoFromComponents(VideoInput):
    """``VideoFromComponents(components, bit_depth=8)``: frames + audio in memory (CreateVideo's output)."""

    def __init__(self, components: VideoComponents, bit_depth: int = 8):
        self.__components = components
        self.__bit_depth = bit_depth

    def get_components(self) -> VideoComponents:
        c = self.__components
        return VideoComponents(images=c.images, audio=c.audio, frame_rate=c.frame_rate)

    def get_bit_depth(self) -> int:
        return self.__bit_depth

    def save_to(self, path, format=VideoContainer.AUTO, codec=VideoCodec.AUTO, metadata=None, bit_depth=None,
                crf=None) -> None:
        raise NotImplementedError("the ComfyUI stand-in does not encode VideoFromComponents")

    def as_trimmed(self, start_time=None, duration=None, strict_duration=True) -> VideoInput | None:
        raise NotImplementedError("the ComfyUI stand-in does not trim videos")


__all__ = ["VideoInput", "VideoFromFile", "VideoFromComponents", "VideoComponents", "VideoContainer",
           "VideoCodec"]
