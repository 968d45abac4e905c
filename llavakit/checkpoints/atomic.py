"""Write a model directory all-or-nothing.

Every command that writes a model (build, GGUF conversion, later export and
training) writes into a hidden temporary sibling and swaps it into place only
when everything is on disk. An interrupted or failed run leaves the old
directory (if any) untouched and no half-written directory that would later
half-load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out_dir``, on failure it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the result is an ordinary model directory
    old = None
    try:
        yield tmp
        if out_dir.exists():  # a directory cannot be renamed over a full one: move it aside first
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old is not None:
                os.replace(old / out_dir.name, out_dir)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
