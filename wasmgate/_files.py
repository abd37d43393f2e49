# -*- test-case-name: tests.test_sources,tests.test_wasm_engine -*-
"""
Files other processes (or our next start) read while we may be writing.
"""
from __future__ import annotations

import os
import tempfile


def write_atomically(path: str, data: bytes) -> None:
    """
    Readers see the old file or the whole new one, never a part: write a
    temporary file beside C{path}, flush it to disk, rename it over.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
