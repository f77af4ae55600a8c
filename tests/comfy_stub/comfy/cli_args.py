"""Stand-in for ComfyUI's ``comfy.cli_args``: the parsed command line, with the flags our nodes read
(names and defaults as in ComfyUI 0.33's argparse definitions)."""

import argparse

args = argparse.Namespace(
    cpu=False,
    force_fp32=False,
    force_fp16=False,
    use_pytorch_cross_attention=False,
    use_split_cross_attention=False,
    use_quad_cross_attention=False,
    disable_xformers=False,
)
