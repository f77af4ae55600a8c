"""Stand-in for ``comfy_api.latest.ui``: the results a node shows in the UI (only what we use)."""

from __future__ import annotations

from ._io import FolderType, _UIOutput


class SavedResult(dict):
    """``SavedResult(filename, subfolder, type)``: one file a node wrote, as the frontend wants it."""

    def __init__(self, filename: str, subfolder: str, type: FolderType):
        super().__init__(filename=filename, subfolder=subfolder, type=type.value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class PreviewVideo(_UIOutput):
    """``PreviewVideo(values)``: show saved videos on the node."""

    def __init__(self, values: list[SavedResult | dict], **kwargs):
        self.values = values

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (True,)}


__all__ = ["SavedResult", "PreviewVideo"]
