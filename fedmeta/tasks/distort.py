"""Random small affine distortions of character images: another drawing of the same glyph.

A device that holds one drawer of Omniglot has a single image per character, too few for a
support and a query. Its missing images are made by distorting the ones it has: a rotation
of up to ``MAX_ROTATION`` degrees, a scale in ``SCALE``, a shear up to ``MAX_SHEAR`` and a
shift of up to ``MAX_SHIFT`` of the image width, drawn per image from the episode's rng.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MAX_ROTATION = 15.0  # degrees
SCALE = (0.85, 1.15)
MAX_SHEAR = 0.15
MAX_SHIFT = 0.08  # of the image width, each way


def distort(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``images`` ``(n, H, W)`` or ``(n, C, H, W)`` float32, each warped by its own random
    affine map (one map for all channels of an image)."""
    n = len(images)
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION, n))
    scale = rng.uniform(*SCALE, n)
    shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR, n)
    shift = rng.uniform(-2 * MAX_SHIFT, 2 * MAX_SHIFT, (n, 2))  # grid units span 2 widths
    cos, sin = np.cos(angle), np.sin(angle)
    theta = np.stack([np.stack([cos / scale, (-sin + shear * cos) / scale, shift[:, 0]], 1),
                      np.stack([sin / scale, (cos + shear * sin) / scale, shift[:, 1]], 1)], 1)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = x[:, None] if x.dim() == 3 else x
    grid = F.affine_grid(torch.from_numpy(theta.astype(np.float32)), list(x.shape),
                         align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.reshape(images.shape).numpy()

