"""The one conversion of an image file to a model input, used for training and evaluation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SIZE = 28


def to_array(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Greyscale, resize to ``size`` x ``size`` (Lanczos) and invert: ink 1.0, paper 0.0.

    Omniglot is black ink on white paper; inverting puts the signal in the non-zero pixels.
    Returns float32 of shape ``(size, size)`` in ``[0, 1]``.
    """
    grey = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    return 1.0 - np.asarray(grey, dtype=np.float32) / 255.0


def decode(data: bytes, name: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode image bytes to a model input; a file that is no image names itself."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return to_array(image, size)
    except UnidentifiedImageError as exc:
        raise DataError(f"{name}: not a readable image (unknown or corrupt format)") from exc
    except OSError as exc:  # truncated or damaged image data
        raise DataError(f"{name}: not a readable image ({exc})") from exc
