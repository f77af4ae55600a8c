"""ComfyUI-KDTalker: ComfyUI entry point (V3). Registers the nodes; the library is kdtalker_core."""

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES, register_model_folders


class KDTalkerExtension(ComfyExtension):
    """The KDTalker node set."""

    async def on_load(self) -> None:
        register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> KDTalkerExtension:
    return KDTalkerExtension()
