"""User-facing error types. Every message says what went wrong *and what to do*."""

from __future__ import annotations


class KDTalkerError(Exception):
    """Base class of errors caused by user input or files (CLI exit code 2, no traceback)."""


class ModelFileError(KDTalkerError):
    """A checkpoint is missing, unreadable, corrupt, or is not the expected model."""


class AudioError(KDTalkerError):
    """Audio is empty, shorter than one video frame, non-finite, or cannot be decoded."""


class FaceError(KDTalkerError):
    """No face (or not the requested face) was found in the portrait."""


class InputError(KDTalkerError):
    """Any other invalid argument or input (bad image, bad option value, ...)."""
