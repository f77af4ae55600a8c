"""Widget inputs shared by several nodes (one definition each, so the nodes stay consistent)."""

from __future__ import annotations

from comfy_api.latest import io

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Random seed: other seeds give other head motion for the same speech.")


def steps_input() -> io.Int.Input:
    return io.Int.Input("steps", default=50, min=1, max=1000,
                        tooltip="DDIM steps per 64-frame window. 50 is the official setting; "
                                "10 is about 5x faster with similar lip sync.")


def smoothing_input() -> io.Float.Input:
    return io.Float.Input("smoothing", default=1.0, min=0.0, max=4.0, step=0.05,
                          tooltip="Kalman smoothing of the motion: 1 is the official amount, 0 is off, "
                                  "above 1 is smoother (calmer head, softer lips).")


def chunk_size_input() -> io.Int.Input:
    return io.Int.Input("chunk_size", default=8, min=1, max=512,
                        tooltip="Frames rendered at once. Larger is faster on a GPU and uses more "
                                "memory; memory does not grow with the audio length.")


def paste_back_input() -> io.Boolean.Input:
    return io.Boolean.Input("paste_back", default=True,
                            tooltip="On: paste the animated face into the original photo (full size). "
                                    "Off: output the 512x512 face crop.")
