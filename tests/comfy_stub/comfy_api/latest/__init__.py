"""Stand-in for ``comfy_api.latest``: ``ComfyExtension`` and the V3 ``io`` namespace."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io

IO = io


class ComfyExtension(ABC):
    """What ``comfy_entrypoint()`` returns; ComfyUI awaits ``on_load`` then ``get_node_list``."""

    async def on_load(self) -> None:  # noqa: B027 - optional hook, as in ComfyUI
        """Called once when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes this extension provides."""


__all__ = ["ComfyExtension", "io", "IO"]
