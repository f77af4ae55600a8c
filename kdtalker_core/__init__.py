"""kdtalker_core: KDTalker talking-portrait generation as a plain PyTorch library.

Importable and testable without ComfyUI. See README.md for the pipeline overview.
"""

__version__ = "0.1.0"
