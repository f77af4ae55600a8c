"""ComfyUI nodes of ComfyUI-KDTalker (V3 schema). Adapters only: all the work is in kdtalker_core."""

from __future__ import annotations

from .all_in_one import KDTalker
from .audio import KDTalkerEncodeAudio
from .compose import KDTalkerComposeFaces
from .driving import KDTalkerExtractVideoMotion, KDTalkerMixMotion
from .models import KDTalkerLoadModels, register_model_folders
from .motion import KDTalkerSampleMotion
from .motion_tools import (
    KDTalkerBlendMotion,
    KDTalkerLoadMotion,
    KDTalkerPlotMotion,
    KDTalkerSaveMotion,
    KDTalkerScaleMotion,
    KDTalkerStillHead,
)
from .performance import KDTalkerBlinks, KDTalkerCalmSilences, KDTalkerFrameRate, KDTalkerMouthOpenness
from .portrait import KDTalkerPreparePortrait
from .render import KDTalkerRender
from .video import KDTalkerRenderVideo

#: Every node, in menu order. Node ids are stable: never rename one that has shipped.
NODES = [
    KDTalkerLoadModels,
    KDTalker,
    KDTalkerPreparePortrait,
    KDTalkerEncodeAudio,
    KDTalkerSampleMotion,
    KDTalkerRender,
    KDTalkerScaleMotion,
    KDTalkerStillHead,
    KDTalkerBlendMotion,
    KDTalkerSaveMotion,
    KDTalkerLoadMotion,
    KDTalkerPlotMotion,
    KDTalkerExtractVideoMotion,
    KDTalkerMixMotion,
    KDTalkerRenderVideo,
    KDTalkerBlinks,
    KDTalkerMouthOpenness,
    KDTalkerCalmSilences,
    KDTalkerFrameRate,
    KDTalkerComposeFaces,
]

__all__ = ["NODES", "register_model_folders", *(n.__name__ for n in NODES)]
