"""Writing files that other programs read while we write them.

One writer for every role: resolver files (agent, roaming client), state and
status records, certificates and keys.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("ztna.files")


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` so that a reader sees the old file or the new one, never half.

    Writes a temporary file beside it (created with ``mode``, so a private key
    is never readable by others even for a moment), fsyncs it and renames it
    over.  A bind-mount target cannot be renamed over (EBUSY: inside ``ip netns
    exec`` /etc/resolv.conf is one), so that case is rewritten in place, and
    said.  A symlink is written through, never replaced: the file it points
    at gets the new content and the link stays (on Ubuntu /etc/resolv.conf is
    a link other software relies on).  Other failures raise OSError.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.ztna-{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno != errno.EBUSY:
            raise
        log.warning("%s is a mount point (EBUSY on rename); writing it in place, not atomically. "
                    "Point the setting at the file behind the mount (e.g. /etc/netns/NS/resolv.conf)", path)
        with open(path, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        return
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
