"""Stand-in for ComfyUI's V3 node schema (``comfy_api.latest.io``).

Only the subset the KDTalker nodes use, with ComfyUI's constructor signatures (keyword names and
order), so that an argument ComfyUI would reject is rejected here too. Each socket type is a class
with ``io_type`` and nested ``Input``/``Output`` classes, as in ComfyUI.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import _video


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class ControlAfterGenerate(str, Enum):
    fixed = "fixed"
    increment = "increment"
    decrement = "decrement"
    randomize = "randomize"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class Input:
    """A socket input (no widget)."""

    io_type: str = ""

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, extra_dict=None, raw_link: bool = None, advanced: bool = None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict or {}
        self.advanced = advanced


class WidgetInput(Input):
    """An input with a widget and a default value."""

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default: Any = None, socketless: bool = None, widget_type: str = None,
                 force_input: bool = None, extra_dict=None, raw_link: bool = None, advanced: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
        self.default = default
        self.socketless = socketless
        self.force_input = force_input


class Output:
    io_type: str = ""

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name if display_name else id
        self.tooltip = tooltip
        self.is_output_list = is_output_list


def _socket_type(io_type: str, input_base: type = Input, name: str | None = None) -> type:
    """A ComfyType class with nested Input/Output subclasses bound to ``io_type``."""
    inp = type("Input", (input_base,), {"io_type": io_type})
    out = type("Output", (Output,), {"io_type": io_type})
    return type(name or io_type.title(), (), {"io_type": io_type, "Input": inp, "Output": out})


class _UIOutput:
    """Base of the UI results in ``comfy_api.latest.ui`` (``as_dict()`` goes to the frontend)."""

    def as_dict(self) -> dict:
        raise NotImplementedError


Image = _socket_type("IMAGE", name="Image")
Mask = _socket_type("MASK", name="Mask")
Audio = _socket_type("AUDIO", name="Audio")
Video = _socket_type("VIDEO", name="Video")
Video.Type = _video.VideoInput  # what travels on a VIDEO socket, as in ComfyUI
AnyType = _socket_type("*", name="AnyType")


def Custom(io_type: str) -> type:  # noqa: N802 - ComfyUI's name
    """A ComfyType for a custom ``io_type``."""
    return _socket_type(io_type)


class _BooleanInput(WidgetInput):
    io_type = "BOOLEAN"

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default: bool = None, label_on: str = None, label_off: str = None,
                 socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None,
                 advanced: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link, advanced)
        self.label_on = label_on
        self.label_off = label_off


class _IntInput(WidgetInput):
    io_type = "INT"

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default: int = None, min: int = None, max: int = None, step: int = None,
                 control_after_generate: bool | ControlAfterGenerate = None,
                 display_mode: NumberDisplay = None, socketless: bool = None, force_input: bool = None,
                 extra_dict=None, raw_link: bool = None, advanced: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link, advanced)
        self.min, self.max, self.step = min, max, step
        self.control_after_generate = control_after_generate
        self.display_mode = display_mode


class _FloatInput(WidgetInput):
    io_type = "FLOAT"

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default: float = None, min: float = None, max: float = None,
                 step: float = None, round: float = None, display_mode: NumberDisplay = None,
                 gradient_stops: list[dict] = None, socketless: bool = None, force_input: bool = None,
                 extra_dict=None, raw_link: bool = None, advanced: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link, advanced)
        self.min, self.max, self.step, self.round = min, max, step, round
        self.display_mode = display_mode


class _StringInput(WidgetInput):
    io_type = "STRING"

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, multiline=False, placeholder: str = None, default: str = None,
                 dynamic_prompts: bool = None, socketless: bool = None, force_input: bool = None,
                 extra_dict=None, raw_link: bool = None, advanced: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link, advanced)
        self.multiline = multiline
        self.placeholder = placeholder


class _ComboInput(WidgetInput):
    io_type = "COMBO"

    def __init__(self, id: str, options: list[str] | list[int] | type[Enum] = None, display_name: str = None,
                 optional=False, tooltip: str = None, lazy: bool = None, default: str | int | Enum = None,
                 control_after_generate: bool | ControlAfterGenerate = None, upload: UploadType = None,
                 image_folder: FolderType = None, remote=None, socketless: bool = None, extra_dict=None,
                 raw_link: bool = None, advanced: bool = None):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        if isinstance(default, Enum):
            default = default.value
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None,
                         extra_dict, raw_link, advanced)
        self.options = options
        self.upload = upload


Boolean = type("Boolean", (), {"io_type": "BOOLEAN", "Input": _BooleanInput,
                               "Output": type("Output", (Output,), {"io_type": "BOOLEAN"})})
Int = type("Int", (), {"io_type": "INT", "Input": _IntInput,
                       "Output": type("Output", (Output,), {"io_type": "INT"})})
Float = type("Float", (), {"io_type": "FLOAT", "Input": _FloatInput,
                           "Output": type("Output", (Output,), {"io_type": "FLOAT"})})
String = type("String", (), {"io_type": "STRING", "Input": _StringInput,
                             "Output": type("Output", (Output,), {"io_type": "STRING"})})
Combo = type("Combo", (), {"io_type": "COMBO", "Input": _ComboInput,
                           "Output": type("Output", (Output,), {"io_type": "COMBO"})})


@dataclass
class Schema:
    """Definition of a V3 node (the fields the KDTalker nodes use)."""

    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    not_idempotent: bool = False

    def validate(self) -> None:
        """Input ids unique, output ids unique (as ComfyUI checks)."""
        issues = []
        for what, ids in (("Input", [i.id for i in self.inputs]), ("Output", [o.id for o in self.outputs])):
            dup = [k for k, n in Counter(ids).items() if n > 1]
            if dup:
                issues.append(f"{what} ids must be unique, but {dup} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self) -> None:
        for i, out in enumerate(self.outputs):
            if out.id is None:
                out.id = f"_{i}_{out.io_type}_"


class NodeOutput:
    """A node's outputs (positional, in schema order) and optional UI payload."""

    def __init__(self, *args: Any, ui: Any = None, expand: dict = None, block_execution: str = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class ComfyNode:
    """Base class of V3 nodes: classmethods ``define_schema`` and ``execute``."""

    hidden: Any = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802 - ComfyUI's name
        """Finalise and validate the schema, as ComfyUI does when it registers the node."""
        if cls.define_schema.__func__ is ComfyNode.define_schema.__func__:
            raise Exception(f"No define_schema function was defined for node class {cls.__name__}.")
        if cls.execute.__func__ is ComfyNode.execute.__func__:
            raise Exception(f"No execute function was defined for node class {cls.__name__}.")
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema
