"""Image paths and pixels: resolution under an image root, verification and loading.

Every failure is a :class:`~s2d_align.errors.DataError` that names the file, so a bad image in a
dataset of 300k is found from the message alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from s2d_align.errors import DataError

# 16-bit greyscale PNGs (some DICOM exports) are scaled by their full range, not clipped to 8 bits.
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def resolve_under_root(relpath: str, image_root: Path) -> Path:
    """Resolve ``relpath`` (relative or absolute) and require it to stay inside ``image_root``.

    Symlinks are followed before the check, so a link that points outside the root is refused
    just like ``../x.png``: an annotation must never make the suite read files it was not given.
    """
    if not isinstance(relpath, str) or not relpath.strip():
        raise DataError(f"image path must be a non-empty string, got {relpath!r}")
    root = image_root.resolve()
    candidate = Path(relpath)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(
            f"image path {relpath!r} escapes the image root {root} (resolves to {resolved})"
        )
    return resolved


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"image path {path} is a directory, not an image file")
    if not path.is_file():
        raise DataError(f"image not found: {path}")


def verify_image(path: str | Path) -> None:
    """Check that ``path`` exists and decodes as an image (Pillow ``verify`` plus a full load).

    ``verify`` alone misses truncated pixel data in some formats, so the image is also loaded.
    """
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused to decode, too many pixels: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image: {exc}") from None


def load_image(path: str | Path, size: int | None) -> np.ndarray:
    """Load an image as greyscale float32 in [0, 1], resized to ``size`` x ``size`` (None: keep).

    Colour images are converted to luminance; 16-bit images keep their full range.
    """
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _WIDE_MODES:
                arr = np.asarray(img, dtype=np.float32) / _WIDE_MODES[img.mode]
            elif img.mode in ("I", "F"):
                arr = np.asarray(img, dtype=np.float32)
                peak = float(arr.max()) if arr.size else 0.0
                arr = arr / (65535.0 if peak > 255.0 else 255.0)
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused to decode, too many pixels: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image: {exc}") from None
    if size is not None:
        if size < 1:
            raise DataError(f"image size must be >= 1, got {size}")
        if arr.shape != (size, size):
            resized = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32)).resize(
                (size, size), Image.Resampling.BILINEAR
            )
            arr = np.asarray(resized, dtype=np.float32)
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)
