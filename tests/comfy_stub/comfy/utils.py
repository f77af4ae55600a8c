"""Stand-in for ``comfy.utils``: the progress bar and its global hook."""

from __future__ import annotations

from collections.abc import Callable

PROGRESS_BAR_HOOK: Callable | None = None


def set_progress_bar_global_hook(function: Callable | None) -> None:
    """ComfyUI's server installs a hook that also raises on a pending interrupt (Cancel)."""
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    """``ProgressBar(total, node_id=None)``; ``update(n)`` adds, ``update_absolute(v)`` sets."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value: int, total: int | None = None, preview=None) -> None:
        if total is not None:
            self.total = total
        value = min(value, self.total)
        self.current = value
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)
