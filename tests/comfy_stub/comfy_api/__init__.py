"""Stand-in for ``comfy_api`` (only ``comfy_api.latest``)."""
