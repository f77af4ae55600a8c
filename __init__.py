"""ComfyUI-KDTalker: ComfyUI entry point (V3). Registers the nodes; the library is kdtalker_core.

Outside ComfyUI (e.g. pytest walking the repository, which is also a package) ``comfy_api`` is
absent and this module defines nothing.
"""

import importlib.util

if importlib.util.find_spec("comfy_api") is not None:
    from comfy_api.latest import ComfyExtension, io

    from .nodes import NODES, register_model_folders
    from .nodes.samples import install_sample_inputs

    class KDTalkerExtension(ComfyExtension):
        """The KDTalker node set."""

        async def on_load(self) -> None:
            register_model_folders()
            install_sample_inputs()  # the example workflows' inputs; never replaces a user's file

        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    async def comfy_entrypoint() -> KDTalkerExtension:
        """ComfyUI V3 entry point."""
        return KDTalkerExtension()
