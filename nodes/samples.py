"""First run: put the bundled sample portrait and speech, and a sample driving clip, into ComfyUI's input folder.

The example workflows load ``sample_portrait.jpg`` and ``sample_speech.wav`` with Load Image / Load
Audio, and ``kdtalker_sample_driving.mp4`` (made at load time from the sample portrait by
:func:`kdtalker_core.samples.write_sample_driving_video`, under a second) with Load Video; with the
files in input/ a new user can press Run right after picking the models. A file of the same name
that is already there (the user's own) is never replaced, and a half-written file is never left
behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import folder_paths

from ..kdtalker_core.samples import SAMPLE_DRIVING_NAME, copy_new, write_sample_driving_video

ASSETS = Path(__file__).resolve().parents[1] / "kdtalker_core" / "assets"
#: The bundled inputs the example workflows reference, by file name.
SAMPLE_INPUTS = ("sample_portrait.jpg", "sample_speech.wav")

log = logging.getLogger(__name__)


def install_sample_inputs() -> list[Path]:
    """Copy each sample (and write the sample driving clip) into ``folder_paths.get_input_directory()``
    unless that name exists there.

    Returns the files written. Problems (read-only folder, full disk) are logged, not raised: the
    nodes work without the samples.
    """
    written: list[Path] = []
    try:
        input_dir = Path(folder_paths.get_input_directory())
        input_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("KDTalker: cannot create the input folder for the sample files: %s", exc)
        return written
    for name in SAMPLE_INPUTS:
        target = input_dir / name
        if os.path.lexists(target):
            continue
        try:
            if copy_new(ASSETS / name, target):
                written.append(target)
        except OSError as exc:
            log.warning("KDTalker: could not copy the sample %s into %s: %s", name, input_dir, exc)
    target = input_dir / SAMPLE_DRIVING_NAME
    if not os.path.lexists(target):
        try:
            if write_sample_driving_video(target):
                written.append(target)
        except Exception as exc:  # noqa: BLE001  (an encoder problem must not stop the nodes from loading)
            log.warning("KDTalker: could not write the sample driving clip %s: %s", target, exc)
    return written

