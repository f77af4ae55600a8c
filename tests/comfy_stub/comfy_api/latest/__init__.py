"""Stand-in for ``comfy_api.latest``: ``ComfyExtension``, the V3 ``io`` and ``ui`` namespaces and the
native VIDEO value classes (``Input``, ``InputImpl``, ``Types``)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui
from ._video import (
    VideoCodec,
    VideoComponents,
    VideoContainer,
    VideoFromComponents,
    VideoFromFile,
    VideoInput,
)

IO = io
UI = ui


class Input:
    """Value types of the core sockets (only VIDEO is a class of its own here)."""

    Video = VideoInput


class InputImpl:
    """Concrete VIDEO values."""

    VideoFromFile = VideoFromFile
    VideoFromComponents = VideoFromComponents


class Types:
    """Helper types of the VIDEO API."""

    VideoCodec = VideoCodec
    VideoContainer = VideoContainer
    VideoComponents = VideoComponents


class ComfyExtension(ABC):
    """What ``comfy_entrypoint()`` returns; ComfyUI awaits ``on_load`` then ``get_node_list``."""

    async def on_load(self) -> None:  # noqa: B027 - optional hook, as in ComfyUI
        """Called once when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes this extension provides."""


__all__ = ["ComfyExtension", "io", "IO", "ui", "UI", "Input", "InputImpl", "Types"]
