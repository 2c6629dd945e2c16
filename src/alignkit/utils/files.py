"""Is a saved file whole? Cheap checks that read headers, not tensors: shared by model loading (a user's model
directory) and resuming (a checkpoint's weights and ``torch.save`` archives)."""

from __future__ import annotations

import zipfile
from pathlib import Path


def first_line(exc: BaseException) -> str:
    """An exception's message on one short line (its type when it has none), for one-line errors."""
    return str(exc).strip().split("\n")[0][:200] or type(exc).__name__


def is_zip(file: Path) -> bool:
    """Whether ``file`` starts like a zip archive (what ``torch.save`` writes; older pickles do not)."""
    with file.open("rb") as handle:
        return handle.read(2) == b"PK"


def file_damage(file: Path) -> str | None:
    """Why ``file`` cannot be read whole, in a few words (None: nothing found). A ``.safetensors`` file must have a
    readable header and be as long as it says; anything else is taken for a ``torch.save`` zip archive, which must
    keep its central directory (lost when the file is cut short) and end within the file."""
    from safetensors import SafetensorError, safe_open

    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), "pt"):
                return None
        with zipfile.ZipFile(file) as archive:
            end = max((i.header_offset + i.compress_size for i in archive.infolist()), default=0)
    except (OSError, SafetensorError, zipfile.BadZipFile) as exc:
        return first_line(exc)
    size = file.stat().st_size
    return f"the archive ends at byte {end}, past the file's {size}" if end > size else None
