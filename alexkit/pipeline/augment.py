"""The random parameters of the paper's augmentation, and NumPy references of every graph.

The DALI graphs (graphs.py) draw no random numbers: crop corners, flips and lighting alphas are
drawn here from a NumPy Generator and fed to the graph with the image bytes. So a test can pin
them and compare the graph's output with the plain NumPy functions at the bottom of this file.

All pixel values are 0-255 RGB. Images are (H, W, 3) uint8 as stored; outputs are (3, C, C)
float32 (CHW), the layout the network reads.
"""

from __future__ import annotations

import numpy as np

from alexkit.pipeline.constants import LIGHTING_STD, crop_size

# The ten test-time views, in output order: the four corners and the centre, then the same five
# windows mirrored. Each entry is (where the window sits, mirrored?).
TEN_VIEWS = (
    ("top-left", False),
    ("top-right", False),
    ("bottom-left", False),
    ("bottom-right", False),
    ("centre", False),
    ("top-left", True),
    ("top-right", True),
    ("bottom-left", True),
    ("bottom-right", True),
    ("centre", True),
)


def train_params(rng: np.random.Generator, n: int, size: int, crop: int):
    """Draw n training augmentations (paper section 4.1): crop corners x, y in [0, size - crop], flip with p = 0.5,
    lighting alpha normal with std LIGHTING_STD per principal component. Returns (x, y, flip, alpha):
    int64 (n,), int64 (n,), bool (n,), float64 (n, 3).

    [0, 32] at 256 -> 224 is 33 corners per axis: the paper's "factor of 2048" counts 32 x 32 x 2.
    """
    x = rng.integers(0, size - crop + 1, n)
    y = rng.integers(0, size - crop + 1, n)
    flip = rng.random(n) < 0.5
    alpha = rng.normal(0.0, LIGHTING_STD, (n, 3))
    return x, y, flip, alpha


def lighting_offsets(alpha: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray) -> np.ndarray:
    """PCA lighting: the RGB shift added to every pixel of an image, eigvec @ (alpha * sqrt(eigval)).

    eigval are the variances of the training pixels along the principal axes (0-255 units), so
    sqrt(eigval) are standard deviations and, with alpha normal with std 0.1, the shifts have covariance
    eigvec @ diag(0.01 * eigval) @ eigvec.T: a tenth of the pixel spread along each axis.
    alpha (n, 3) -> (n, 3) float32.

    Section 4.1 of the paper writes alpha * eigval; the authors' code, and alexkit, scale by
    sqrt(eigval). On 0-255 pixels the paper's formula read literally would shift by hundreds of
    levels (README.md, "PCA lighting scale").
    """
    return ((np.asarray(alpha) * np.sqrt(eigval)) @ np.asarray(eigvec).T).astype(np.float32)


def center_corner(size: int, crop: int) -> int:
    """The top-left corner (on both axes) of the centre crop: the window's left margin rounds down."""
    return (size - crop) // 2


def ten_view_windows(size: int, crop: int):
    """The ten test views as (x, y, flip) triples, in TEN_VIEWS order."""
    far, mid = size - crop, center_corner(size, crop)
    corners = {"top-left": (0, 0), "top-right": (far, 0), "bottom-left": (0, far), "bottom-right": (far, far), "centre": (mid, mid)}
    return [(*corners[where], flip) for where, flip in TEN_VIEWS]


# --- NumPy references: the definition of what the graphs compute ---


def reference_crop(image: np.ndarray, mean_image: np.ndarray, x: int, y: int, flip: bool, offset=(0.0, 0.0, 0.0),
                   crop: int | None = None) -> np.ndarray:  # fmt: skip
    """One view: crop CxC at (x, y), mirror if flip, subtract the mean image cropped and mirrored the
    same way, add the lighting offset (in that order, as the graphs round). (H, W, 3) uint8 -> (3, C, C) float32."""
    c = crop_size(image.shape[0]) if crop is None else crop
    window = (slice(y, y + c), slice(x, x + c))
    pixels = image[window].astype(np.float32)  # (C, C, 3)
    mean = mean_image[window].astype(np.float32)
    if flip:
        pixels, mean = pixels[:, ::-1], mean[:, ::-1]
    out = (pixels - mean) + np.asarray(offset, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))  # (3, C, C)


def reference_train(image: np.ndarray, mean_image: np.ndarray, x: int, y: int, flip: bool, offset, crop: int | None = None) -> np.ndarray:
    """The whole training transform of one image with pinned parameters: (3, C, C) float32."""
    return reference_crop(image, mean_image, x, y, flip, offset, crop)


def reference_center(image: np.ndarray, mean_image: np.ndarray, crop: int | None = None) -> np.ndarray:
    """The centre view, mean-subtracted: (3, C, C) float32."""
    c = crop_size(image.shape[0]) if crop is None else crop
    m = center_corner(image.shape[0], c)
    return reference_crop(image, mean_image, m, m, False, crop=c)


def reference_tencrop(image: np.ndarray, mean_image: np.ndarray, crop: int | None = None) -> np.ndarray:
    """The ten views in TEN_VIEWS order, mean-subtracted: (10, 3, C, C) float32."""
    c = crop_size(image.shape[0]) if crop is None else crop
    return np.stack([reference_crop(image, mean_image, x, y, f, crop=c) for x, y, f in ten_view_windows(image.shape[0], c)])
