"""Widget inputs shared by several nodes (one definition each, so the nodes stay consistent).

Defaults, limits and menus come from :mod:`kdtalker_core.options`, the same values the CLI and
the library use.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..kdtalker_core import options

SEED_MAX = 0xFFFFFFFFFFFFFFFF
DEFAULTS = options.DEFAULTS


def seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Random seed: other seeds give other head motion for the same speech.")


def steps_input() -> io.Int.Input:
    return io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=options.MAX_STEPS,
                        tooltip="DDIM steps per 64-frame window. 50 is the official setting; "
                                "10 is about 5x faster with similar lip sync.")


def eta_input() -> io.Float.Input:
    return io.Float.Input("eta", default=DEFAULTS.eta, min=0.0, max=1.0, step=0.05,
                          tooltip="DDIM eta: 0 is deterministic DDIM (official); 1 adds fresh noise "
                                  "at every step like DDPM.")


def smoothing_input() -> io.Float.Input:
    return io.Float.Input("smoothing", default=DEFAULTS.smoothing, min=0.0, max=options.MAX_SMOOTHING, step=0.05,
                          tooltip="Kalman smoothing of the motion: 1 is the official amount, 0 is off, "
                                  "above 1 is smoother (calmer head, softer lips).")


def fps_input() -> io.Float.Input:
    return io.Float.Input("fps", default=DEFAULTS.fps, min=options.MIN_FPS, max=options.MAX_FPS, step=1.0,
                          tooltip=f"Video frame rate. The audio features are always made at "
                                  f"{options.MODEL_FPS:g} fps (the model's rate); Sample Motion resamples its "
                                  "motion to this rate, so lip sync is the same at any rate.")


def output_fps_input(optional: bool = False) -> io.Float.Input:
    """Output frame rate of a node that runs the whole pipeline (the motion is resampled to it)."""
    return io.Float.Input("fps", default=DEFAULTS.fps, min=options.MIN_FPS, max=options.MAX_FPS, step=1.0,
                          optional=optional,
                          tooltip=f"Output frame rate (24, 25, 30, 50, 60 ...). The motion is always made at "
                                  f"{options.MODEL_FPS:g} fps, the model's rate, then resampled: lip sync is "
                                  "the same at any rate and the audio stays aligned.")


def chunk_size_input() -> io.Int.Input:
    return io.Int.Input("chunk_size", default=DEFAULTS.chunk_size, min=1, max=options.MAX_CHUNK_SIZE,
                        tooltip="Frames rendered at once. Larger is faster on a GPU and uses more "
                                "memory; memory does not grow with the audio length.")


def paste_back_input() -> io.Boolean.Input:
    return io.Boolean.Input("paste_back", default=DEFAULTS.paste_back,
                            tooltip="On: paste the animated face into the original photo (full size). "
                                    "Off: output the 512x512 face crop.")

