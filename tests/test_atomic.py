"""kdtalker_core.atomic: files appear only when complete, with a normal file's mode."""

from __future__ import annotations

import os

from kdtalker_core.atomic import publish, publish_new, temp_beside


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_temp_beside_then_publish(tmp_path):
    target = tmp_path / "sub" / "clip.mp4"
    tmp = temp_beside(target, ".part.mp4")
    assert tmp.parent == target.parent and tmp.name.startswith(".clip.mp4.") and tmp.name.endswith(".part.mp4")
    tmp.write_bytes(b"done")
    assert not target.exists()
    publish(tmp, target)
    assert target.read_bytes() == b"done" and not tmp.exists()
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask(), "not mkstemp's owner-only 0600"
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]


def test_publish_new_never_replaces_an_existing_file(tmp_path):
    target = tmp_path / "sample.wav"
    first = temp_beside(target)
    first.write_bytes(b"ours")
    assert publish_new(first, target) and target.read_bytes() == b"ours"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    first.unlink()
    target.write_bytes(b"the user's own")
    second = temp_beside(target)
    second.write_bytes(b"ours again")
    assert not publish_new(second, target)
    assert target.read_bytes() == b"the user's own"
    second.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.wav"]
