"""Replay a fixed-shape step function as one CUDA graph (used by the denoiser's sampling step).

A DDIM window calls the denoiser 50 times on tensors of the same shapes. At 66 tokens the step is
a few hundred small kernels (six layers of 66 x 768 products, norms, rotary turns, attention), so
on a GPU its time goes to launching kernels rather than to arithmetic. :class:`StepGraph` captures
the step once and then runs it as one graph launch: each call copies its arguments into the
graph's static input buffers, replays, and returns a copy of the static output.

:func:`capture` wraps the capture in two safety nets, because a step that cannot be captured (a
host synchronisation, an operator without graph support, an allocation the capture refuses) must
not stop the sampling: a failed capture, or a replay that disagrees with the same step run
directly, prints one line and returns None, and the caller keeps running the step directly.

``KDTALKER_CUDA_GRAPH=0`` turns the graphs off (:func:`wanted`). Nothing here runs on a CPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import torch

#: Calls of the step on a side stream before the capture (cuBLAS / attention workspaces and lazy
#: initialisation happen there, not inside the graph).
WARMUP_CALLS = 3


def wanted(device: torch.device | str) -> bool:
    """Whether steps on ``device`` should be replayed as CUDA graphs: CUDA devices, unless
    ``KDTALKER_CUDA_GRAPH`` is ``0``."""
    if os.environ.get("KDTALKER_CUDA_GRAPH", "").strip() == "0":
        return False
    return torch.device(device).type == "cuda" and hasattr(torch.cuda, "CUDAGraph")


class StepGraph:
    """``fn(*inputs) -> Tensor`` captured once as a CUDA graph on the inputs' device.

    Args:
        fn: the step; it must only launch device work (no host synchronisation, no host reads of
            device values) and return one tensor.
        example: one tensor per argument of ``fn`` (its shapes, dtypes and device are fixed from
            now on; the values are copied into static buffers and used for the warm-up calls).

    Calling the object with tensors of the same shapes copies them into the static buffers,
    replays the graph and returns a fresh copy of the output (later replays overwrite the static
    output). The graph keeps ``fn`` (and whatever buffers it closes over) alive.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], example: Sequence[torch.Tensor],
                 warmup: int = WARMUP_CALLS) -> None:
        device = example[0].device
        self.fn = fn
        self.inputs = [t.detach().clone() for t in example]
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.inputs)
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            # other threads' CUDA work (a UI thread, another node) does not abort this capture
            context = torch.cuda.graph(self.graph, capture_error_mode="thread_local")
        except TypeError:  # older PyTorch: no capture_error_mode
            context = torch.cuda.graph(self.graph)
        with context:
            self.output = fn(*self.inputs)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if len(args) != len(self.inputs):
            raise TypeError(f"the captured step takes {len(self.inputs)} tensors, got {len(args)}")
        for static, value in zip(self.inputs, args):
            static.copy_(value)
        self.graph.replay()
        return self.output.clone()


def capture(fn: Callable[..., torch.Tensor], example: Sequence[torch.Tensor], name: str = "step",
            rtol: float = 2e-2) -> StepGraph | None:
    """A checked :class:`StepGraph` of ``fn`` on ``example``, or None (with a one-line notice on
    stderr) when the capture fails or its replay differs from ``fn(*example)`` by more than
    ``rtol`` times the largest magnitude of the direct result (the replay runs the same kernels, so
    any real difference means the capture went wrong)."""
    try:
        graph = StepGraph(fn, example)
        replayed = graph(*example)
        direct = fn(*example)
    except Exception as exc:  # noqa: BLE001 - any refusal (no CUDA, an uncapturable op): run directly
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kdtalker: CUDA graph capture of the {name} failed ({first}); running it directly",
              file=sys.stderr)
        return None
    scale = float(direct.detach().abs().max()) if direct.numel() else 0.0
    if not torch.allclose(replayed.float(), direct.float(), rtol=0.0, atol=rtol * max(scale, 1e-6)):
        print(f"kdtalker: the CUDA graph of the {name} disagreed with the direct run; running it directly",
              file=sys.stderr)
        return None
    return graph
