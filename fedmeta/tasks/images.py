"""The conversions of an image file to a model input, used for training and evaluation:
grey and inverted (Omniglot, FEMNIST) or RGB (the few-shot benchmarks)."""

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


def to_rgb(image: Image.Image, size: int) -> np.ndarray:
    """RGB, resized to ``size`` x ``size`` (Lanczos): uint8 ``(3, size, size)``; a model
    input is this over 255 (``fewshot.floats``)."""
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode(data: bytes, name: str, size: int = IMAGE_SIZE, channels: int = 1) -> np.ndarray:
    """Decode image bytes to a model input, grey ``(size, size)`` (``to_array``) or, with
    ``channels=3``, RGB ``(3, size, size)`` in ``[0, 1]`` (``to_rgb``); a file that is no
    image names itself."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if channels == 3:
                return to_rgb(image, size).astype(np.float32) / np.float32(255)
            return to_array(image, size)
    except UnidentifiedImageError as exc:
        raise DataError(f"{name}: not a readable image (unknown or corrupt format)") from exc
    except OSError as exc:  # truncated or damaged image data
        raise DataError(f"{name}: not a readable image ({exc})") from exc
