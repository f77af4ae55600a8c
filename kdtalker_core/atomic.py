"""Files that appear only when complete: a temporary file beside the target, then one rename.

Every writer of the package (mp4 videos, converted weights, saved motions, batch outputs, the
first-run samples) goes through these two functions, so a crash or a cancel never leaves a
half-written file under the real name, and finished files get a normal file's permissions.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_beside(path: str | os.PathLike[str], suffix: str = ".part") -> Path:
    """A new, empty temporary file in ``path``'s folder (created if missing), hidden and named after
    it: ``.NAME.<random><suffix>``. The caller writes it, then :func:`publish` es it or unlinks it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Give the complete file ``tmp`` a new file's mode (0666 less the umask; ``mkstemp`` made it
    owner-only) and rename it to ``path`` (atomic on one file system; replaces ``path``)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    return Path(path)


def publish_new(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """:func:`publish` only if ``path`` is free: a file already there (e.g. the user's own) is never
    replaced (atomic where hard links exist). The caller removes ``tmp`` afterwards. Returns True
    when ``path`` now holds ``tmp``'s content."""
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        os.link(tmp, path)  # fails if the name was taken meanwhile
    except FileExistsError:
        return False
    except OSError:  # file systems without hard links
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
    return True


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
