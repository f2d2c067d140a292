"""A daemon's state file written crash-safely, keeping the copy it replaces: the agent and the gateway both
come back from an unreadable file with their previous good copy instead of refusing to start.

Write the new text to a temporary file and fsync it; hard-link the current file to the previous copy's name
(link, then rename: at every moment both names hold a whole file); rename the new file over the current one;
fsync the directory so the renames survive a crash. The files are the daemon's alone (0600): the gateway's
holds its sites' pre-shared keys and private keys.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def replace_keeping_previous(path: Path, previous: Path, text: str, keep: bool = True) -> None:
    """Replace `path` with `text`; when `keep` and `path` exists, it becomes `previous` first. OSError when the
    new file cannot be written whole: then nothing is replaced."""
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if keep and path.is_file():
            link = directory / f".{previous.name}.{os.getpid()}.tmp"
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, previous)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
