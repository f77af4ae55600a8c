"""Stand-in for the ``comfy`` package (only ``comfy.utils`` and ``comfy.model_management``)."""
