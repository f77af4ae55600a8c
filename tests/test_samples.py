"""The sample driving clip (kdtalker_core.samples): made from the real sample portrait, a face the tracker
follows along the camera path, a seamless loop, an H.264 file written atomically and never over a user's file."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kdtalker_core import samples, tracking

FRAMES = 75


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return samples.sample_driving_frames(num_frames=FRAMES)


def test_frames_are_deterministic_and_move(clip):
    assert clip.shape == (FRAMES, 256, 256, 3) and clip.dtype == torch.float32
    assert 0.0 <= float(clip.min()) and float(clip.max()) <= 1.0
    assert torch.equal(clip, samples.sample_driving_frames(num_frames=FRAMES))
    steps = (clip[1:] - clip[:-1]).abs().mean(dim=(1, 2, 3))
    assert float(steps.min()) > 1e-3, "every frame moves"
    assert float(steps.max()) < 0.05, "gently"
    wrap = float((clip[0] - clip[-1]).abs().mean())
    assert wrap < 1.5 * float(steps.median()), "the last frame leads back into the first: it loops seamlessly"


def test_the_face_tracker_follows_the_camera_path(clip):
    track = tracking.track_face(clip, smoothing=0.0)
    assert not track.lost.any() and not track.held.any()
    center = track.landmarks.mean(axis=1)  # (T,2) pixels
    path = samples.camera_path(FRAMES)
    # the view moves right / down -> the face moves left / up in the frame
    assert np.corrcoef(center[:, 0], path["shift_x"])[0, 1] < -0.9
    assert np.corrcoef(center[:, 1], path["shift_y"])[0, 1] < -0.9
    travel = center.max(axis=0) - center.min(axis=0)
    assert (travel > 8).all() and (travel < 60).all(), travel
    width = np.ptp(track.landmarks[:, :17, 0], axis=1)  # jaw line width: zoom and turn change it
    assert width.max() / width.min() > 1.05


def test_write_sample_driving_video(clip, tmp_path):
    import av

    path = tmp_path / samples.SAMPLE_DRIVING_NAME
    start = time.perf_counter()
    assert samples.write_sample_driving_video(path) is True
    seconds = time.perf_counter() - start
    assert seconds < 5.0, f"written at every ComfyUI start: must be quick, took {seconds:.2f} s"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == 25.0
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert decoded.shape == (FRAMES, 256, 256, 3)
    error = np.abs(decoded.astype(np.float32) / 255.0 - clip.numpy()).mean()
    assert error < 0.02, error
    assert [p.name for p in tmp_path.iterdir()] == [samples.SAMPLE_DRIVING_NAME], "no temporary file left"


def test_a_users_file_is_never_replaced(tmp_path):
    path = tmp_path / samples.SAMPLE_DRIVING_NAME
    path.write_bytes(b"my own driving video")
    assert samples.write_sample_driving_video(path) is False
    assert path.read_bytes() == b"my own driving video"
    assert [p.name for p in tmp_path.iterdir()] == [samples.SAMPLE_DRIVING_NAME]
