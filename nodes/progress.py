"""Progress and Cancel for long node work.

kdtalker_core reports progress through ``callback(done, total)`` and is cancelled by the callback
raising. Here that callback drives ComfyUI's ``comfy.utils.ProgressBar`` and checks ComfyUI's
interrupt flag, which raises ``InterruptProcessingException`` when the user pressed Cancel.
A node with several stages maps each stage onto its own share of one bar.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_management as mm
import comfy.utils

#: Resolution of the bar: every stage is mapped onto this many ticks in total.
TICKS = 1000


class NodeProgress:
    """One progress bar for a node, split into weighted stages.

    >>> progress = NodeProgress({"motion": 1.0, "render": 9.0})
    >>> sample_motion(..., callback=progress.stage("motion"))
    """

    def __init__(self, stages: dict[str, float] | None = None):
        stages = stages or {"work": 1.0}
        total = sum(stages.values())
        self._start: dict[str, float] = {}
        self._share: dict[str, float] = {}
        acc = 0.0
        for name, weight in stages.items():
            self._start[name] = acc / total
            self._share[name] = weight / total
            acc += weight
        self.bar = comfy.utils.ProgressBar(TICKS)

    def stage(self, name: str) -> Callable[[int, int], None]:
        """A ``callback(done, total)`` for one stage: moves the bar, raises if Cancel was pressed."""
        start, share = self._start[name], self._share[name]

        def callback(done: int, total: int) -> None:
            mm.throw_exception_if_processing_interrupted()
            fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
            self.bar.update_absolute(int(round(TICKS * (start + share * fraction))), TICKS)

        return callback

    def check(self) -> None:
        """Raise if Cancel was pressed (call between stages)."""
        mm.throw_exception_if_processing_interrupted()
