"""Performance nodes: blinks, mouth openness, calm silences and frame rate on a KDTALKER_MOTION.

Thin wrappers over :mod:`kdtalker_core.retarget` (keypoint-offset form of blinks / mouth),
:mod:`kdtalker_core.silence` and :mod:`kdtalker_core.retime`. Every knob's default leaves the motion
unchanged. The render-time form (LivePortrait's eye / lip MLPs and stitching network) takes the same
knobs: :func:`render_performance_inputs` and :func:`performance_options` are here for the Render node.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..kdtalker_core import motion_edit, options, retarget, retime, silence
from ..kdtalker_core.blink import DEFAULT_BLINK_DURATION
from . import types as t

CATEGORY = "KDTalker/performance"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def blink_inputs(optional: bool = False, seed: bool = True) -> list:
    """Blink widgets (rate, duration, seed when ``seed``, eye openness); defaults change nothing.
    ``optional`` for nodes whose saved workflows predate them."""
    opt = options.DEFAULTS
    inputs = [
        io.Float.Input("blinks_per_minute", default=opt.blink_rate, min=0.0, max=options.MAX_BLINK_RATE,
                       step=1.0, optional=optional,
                       tooltip="Average blinks per minute; 0 = no added blinks (the official output). "
                               "People blink about 10-20 times a minute; 15 looks natural."),
        io.Float.Input("blink_duration", default=opt.blink_duration, min=options.MIN_BLINK_DURATION,
                       max=options.MAX_BLINK_DURATION, step=0.01, optional=optional,
                       tooltip="Seconds from the start of a blink until the eye is open again "
                               "(0.1-0.4 is natural)."),
        io.Int.Input("blink_seed", default=0, min=0, max=SEED_MAX, optional=optional,
                     tooltip="Seed of the blink timing: other seeds blink at other moments."),
        io.Float.Input("eye_openness", default=opt.eye_open, min=0.0, max=options.MAX_EYE_OPEN, step=0.05,
                       optional=optional,
                       tooltip="How open the eyes are relative to the photo: 1 unchanged, 0 closed, "
                               ">1 wider."),
    ]
    return inputs if seed else [i for i in inputs if i.id != "blink_seed"]


def mouth_openness_input(optional: bool = False) -> io.Float.Input:
    return io.Float.Input("mouth_openness", default=options.DEFAULTS.mouth_open, min=0.0,
                          max=options.MAX_MOUTH_OPEN, step=0.05, optional=optional,
                          tooltip="1 unchanged, 0 holds the neutral mouth, >1 opens wider.")


def render_performance_inputs(optional: bool = True) -> list:
    """Render-time widgets (blinks, eye / mouth openness, stitching) for the Render nodes; optional by
    default, so workflows saved before they existed keep loading (and render as before)."""
    return [
        *blink_inputs(optional),
        io.Float.Input("mouth_openness", default=options.DEFAULTS.mouth_open, min=0.0,
                       max=options.MAX_MOUTH_OPEN, step=0.05, optional=optional,
                       tooltip="Scales how far the mouth opens relative to the photo's mouth: 1 unchanged, "
                               "0 keeps the photo's mouth, 1.5 opens 50% more. Uses LivePortrait's lip "
                               "retargeting network when its file is loaded."),
        io.Boolean.Input("stitching", default=options.DEFAULTS.stitching, optional=optional,
                         tooltip="Apply LivePortrait's stitching network (needs "
                                 "stitching_retargeting_module): keeps the neck and shoulders aligned "
                                 "with the pasted-back photo. Off = the official KDTalker output."),
    ]


def silence_strength_input(name: str = "silence_calm", optional: bool = False) -> io.Float.Input:
    return io.Float.Input(name, default=options.DEFAULTS.silence_calm, min=0.0, max=1.0, step=0.05,
                          optional=optional,
                          tooltip="Calm silences: 0 = unchanged (official), 1 = mouth fully closed and head "
                                  "fully settled in pauses of the speech.")


def performance_options(blinks_per_minute: float = 0.0, blink_duration: float = DEFAULT_BLINK_DURATION,
                        blink_seed: int = 0, eye_openness: float = 1.0, mouth_openness: float = 1.0,
                        stitching: bool = False) -> retarget.PerformanceOptions:
    """The widgets of :func:`render_performance_inputs` -> :class:`PerformanceOptions`."""
    return retarget.PerformanceOptions(blink_rate=blinks_per_minute, blink_duration=blink_duration,
                                       blink_seed=blink_seed, eye_open=eye_openness,
                                       mouth_open=mouth_openness, stitching=stitching)


class KDTalkerBlinks(io.ComfyNode):
    """Add natural blinks (and set eye openness) in the motion."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerBlinks",
            display_name="KDTalker Blinks",
            category=CATEGORY,
            description="Writes seeded, natural-looking blinks and an eye-openness setting into the motion "
                        "(eyelid keypoints only). Works without extra model files.",
            inputs=[t.Motion.Input("motion", tooltip="The motion to edit."), *blink_inputs()],
            outputs=[t.Motion.Output("motion", tooltip="The motion with blinks.")],
        )

    @classmethod
    def execute(cls, motion, blinks_per_minute: float, blink_duration: float, blink_seed: int,
                eye_openness: float) -> io.NodeOutput:
        return io.NodeOutput(retarget.add_blinks(motion, blinks_per_minute, blink_duration, blink_seed,
                                                 eye_openness))


class KDTalkerMouthOpenness(io.ComfyNode):
    """Scale how far the mouth opens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerMouthOpenness",
            display_name="KDTalker Mouth Openness",
            category=CATEGORY,
            description="Scales the lip keypoints' movement around a neutral mouth (the photo's mouth when "
                        "a portrait is connected, else the clip's median).",
            inputs=[
                t.Motion.Input("motion", tooltip="The motion to edit."),
                mouth_openness_input(),
                t.Portrait.Input("portrait", optional=True,
                                 tooltip="Optional: use the photo's own mouth as the neutral mouth."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The edited motion.")],
        )

    @classmethod
    def execute(cls, motion, mouth_openness: float, portrait=None) -> io.NodeOutput:
        neutral = portrait.kp_info["exp"] if portrait is not None else None
        return io.NodeOutput(retarget.scale_mouth(motion, mouth_openness, neutral))


class KDTalkerCalmSilences(io.ComfyNode):
    """Close the mouth and settle the head during pauses in the speech."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerCalmSilences",
            display_name="KDTalker Calm Silences",
            category=CATEGORY,
            description="Finds the pauses in the speech from its loudness; during pauses the mouth closes "
                        "and the head movement calms. Also draws a before/after chart (pauses shaded).",
            inputs=[
                t.Motion.Input("motion", tooltip="The motion made from these audio features (any frame "
                                                 "rate)."),
                t.AudioFeatures.Input("audio_features",
                                      tooltip="The Encode Audio output the motion was sampled from: its "
                                              "speech decides where the pauses are."),
                silence_strength_input("strength"),
                io.Boolean.Input("calm_mouth", default=True, tooltip="Close the mouth during pauses."),
                io.Boolean.Input("calm_head", default=True,
                                 tooltip="Pull the head toward its slow average pose during pauses."),
                t.Portrait.Input("portrait", optional=True,
                                 tooltip="Optional: close the mouth to the photo's own mouth (recommended). "
                                         "Without it, the clip's median mouth is used."),
            ],
            outputs=[
                t.Motion.Output("motion", tooltip="The motion with calm silences."),
                io.Image.Output("chart", tooltip="Yaw, eyelids and mouth before (red) and after (green); "
                                                 "pauses shaded blue."),
            ],
        )

    @classmethod
    def execute(cls, motion, audio_features, strength: float, calm_mouth: bool, calm_head: bool,
                portrait=None) -> io.NodeOutput:
        neutral = portrait.kp_info["exp"] if portrait is not None else None
        wave = audio_features.waveform_16k
        weight = silence.pause_weight(silence.voice_activity(wave, motion.num_frames, motion.fps), motion.fps)
        out = silence.calm_silences(motion, weight, strength, neutral_exp=neutral, mouth=calm_mouth,
                                    head=calm_head)
        chart = motion_edit.plot_performance(motion, out, weight)
        return io.NodeOutput(out, t.as_image(chart[None]))


class KDTalkerFrameRate(io.ComfyNode):
    """Resample the motion to another frame rate."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerFrameRate",
            display_name="KDTalker Frame Rate",
            category=CATEGORY,
            description="Resamples the motion (25 fps from the model) to any frame rate; head rotations "
                        "are interpolated as rotations. Render then outputs frames at this rate and the "
                        "audio stays aligned.",
            inputs=[
                t.Motion.Input("motion", tooltip="The motion to resample."),
                io.Float.Input("fps", default=options.MODEL_FPS, min=options.MIN_FPS, max=options.MAX_FPS, step=1.0,
                               tooltip="Output frames per second (24, 25, 30, 50, 60 ...); the frame count "
                                       "becomes round(duration x fps)."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The motion at the new frame rate.")],
        )

    @classmethod
    def execute(cls, motion, fps: float) -> io.NodeOutput:
        return io.NodeOutput(retime.resample_motion(motion, fps))
