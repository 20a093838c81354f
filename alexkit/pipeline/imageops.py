"""The per-image work of `alexkit prepare`, run in worker processes.

One image: decode whatever the file holds (JPEG in RGB, grayscale or CMYK, progressive or not; PNG
or another format under a .JPEG name; palette and alpha images) to RGB, resize the shorter side to
`size` and cut the centred `size` x `size` square, then encode it as JPEG or keep the raw pixels.

The resize is PIL's bilinear filter, which is antialiased: when shrinking by a factor f its
triangle kernel is widened to 2f source pixels, so every source pixel contributes (torchvision's
`Resize(256)` does the same on PIL images). Smaller images are upscaled with the same filter.
Why this one: area averaging (OpenCV's INTER_AREA, what FFCV resizes with) saves only ~0.1 ms
an image and aliases visibly on a zone plate; bicubic and Lanczos cost 60-100% more resize time.
Alpha is dropped, as `Image.convert("RGB")` does in every common ImageNet loader.

Two shortcuts, both giving the result of "resize the whole image, then crop":
  - Only the source region under the crop is resampled (PIL's `box`), with the same kernel
    positions as a full resize followed by the crop. The pixels agree within one grey level
    (PIL may run its two 1-D passes in the other order, which rounds the intermediate
    differently; tested).
  - A JPEG much larger than needed is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (`Image.draft`)
    while the decoded image keeps at least DRAFT_MARGIN (2) times the resized size, so the
    bilinear filter still does the antialiasing. Measured on photo-like JPEGs of 800x600 to
    2048x1536 at size 256: PSNR against a Lanczos resize of the full decode within 0.5 dB of
    the full-decode path (a margin of 1 would lose ~2 dB); a third less time on images whose
    shorter side is 1024 px or more (most of ImageNet is smaller and decodes in full).

`PixelSums` accumulates the training-set statistics of the pixels as stored: the sum image and
the sums of x and x x^T over all pixels, in float64 (exact here), merged across processes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

FILTER = Image.Resampling.BILINEAR
DRAFT_MARGIN = 2  # decode at reduced scale only while keeping >= 2x the resized size per side
FILTER_NAME = "PIL bilinear, antialiased (triangle kernel widened by the shrink factor)"
REASON_CHARS = 200  # a skipped file's reason is cut to one short line


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to `size`; the longer side is rounded, >= size."""
    scale = size / min(width, height)
    if width <= height:
        return size, max(size, round(height * scale))
    return max(size, round(width * scale)), size


def crop_origin(resized: tuple[int, int], size: int) -> tuple[int, int]:
    """Top-left corner (x, y) of the centred size x size crop in an image of size `resized`."""
    return (resized[0] - size) // 2, (resized[1] - size) // 2


def source_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The region of the source image (in its pixel units) that becomes the stored square."""
    rw, rh = resized_size(width, height, size)
    x0, y0 = crop_origin((rw, rh), size)
    sx, sy = width / rw, height / rh  # source pixels per resized pixel
    return (x0 * sx, y0 * sy, min(width, (x0 + size) * sx), min(height, (y0 + size) * sy))


def draft_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The smallest decoded size asked of libjpeg's scaled decode."""
    rw, rh = resized_size(width, height, size)
    return DRAFT_MARGIN * rw, DRAFT_MARGIN * rh


def decode_resized(data: bytes, size: int) -> Image.Image:
    """Decode an image file to RGB, shorter side to `size`, centre crop: a size x size PIL image."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    box = source_box(width, height, size)
    if img.format == "JPEG":
        drafted = img.draft("RGB", draft_size(width, height, size))  # libjpeg scales by 1/2, 1/4, 1/8 or 1
        if drafted is not None:
            scale = drafted[1][2] / width  # decoded pixels per source pixel (1, 1/2, 1/4 or 1/8)
            dw, dh = img.size  # the decoded size, ceil(width * scale) x ceil(height * scale)
            box = (box[0] * scale, box[1] * scale, min(dw, box[2] * scale), min(dh, box[3] * scale))
    if img.mode != "RGB":
        img = img.convert("RGB")  # CMYK (Adobe-inverted ones too), L, P, RGBA, LA, I;16 ...
    return img.resize((size, size), FILTER, box=box)


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """Baseline JPEG with 4:2:0 chroma subsampling (libjpeg's default), as FFCV's writer stores."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg_bgr(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 in BGR order: OpenCV's libjpeg-turbo decode, the same pixels as PIL's, faster."""
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ValueError("OpenCV could not decode the JPEG just encoded")
    return pixels


def convert(data: bytes, size: int, fmt: str, quality: int, *, stored_pixels: bool) -> tuple:
    """One source file -> (what the store keeps, the stored pixels as (size, size, 3) uint8 BGR, or None).

    The store keeps JPEG bytes (fmt "jpg") or the (size, size, 3) uint8 RGB array ("raw"). With
    stored_pixels, the second item is what a loader will decode (for "jpg": the JPEG just
    encoded, decoded again), for the statistics.
    """
    img = decode_resized(data, size)
    if fmt == "raw":
        rgb = np.asarray(img)
        return rgb, np.ascontiguousarray(rgb[:, :, ::-1]) if stored_pixels else None
    encoded = encode_jpeg(img, quality)
    return encoded, decode_jpeg_bgr(encoded) if stored_pixels else None


def skip_reason(exc: BaseException, data: bytes | None) -> str:
    """One short line saying why a file was skipped."""
    if data is not None and len(data) == 0:
        return "empty file"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image in any format PIL can read"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels for a photo ({exc})"[:REASON_CHARS]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:REASON_CHARS] if text else type(exc).__name__


def quiet_worker() -> None:
    """Per-process setup: one thread per library (the pool supplies the parallelism), no PIL warnings."""
    import cv2

    cv2.setNumThreads(1)
    warnings.simplefilter("ignore")  # EXIF, palette transparency and large-image warnings, per file


class PixelSums:
    """Sums over stored pixels in float64: per-pixel sum image, image count, sums of x x^T.

    Every term is an integer and every total stays below 2^53 for ImageNet at 256 px (sum of
    x x^T: 1.28M x 65536 pixels x 255^2 = 5.5e15), so the float64 sums are exact. The sum of x
    per channel is the sum image summed over pixels. Works on BGR pixels (what OpenCV decodes);
    `moments()` answers in RGB.
    """

    def __init__(self, size: int):
        self.size = size
        self.images = 0
        self.sum_image = np.zeros((size, size, 3), np.float64)  # BGR
        self.sum_outer = np.zeros((3, 3), np.float64)  # BGR

    def add(self, bgr: np.ndarray) -> None:
        """Add one (size, size, 3) uint8 image (OpenCV's SIMD kernels: ~0.13 ms at 256 px)."""
        import cv2

        cv2.accumulate(bgr, self.sum_image)
        planes = cv2.split(bgr)
        for i in range(3):
            for j in range(i, 3):
                # float32 holds each product exactly (< 2^24); sumElems adds them in float64.
                total = cv2.sumElems(cv2.multiply(planes[i], planes[j], dtype=cv2.CV_32F))[0]
                self.sum_outer[i, j] += total
                if i != j:
                    self.sum_outer[j, i] += total
        self.images += 1

    def merge(self, other: "PixelSums") -> None:
        self.sum_image += other.sum_image
        self.sum_outer += other.sum_outer
        self.images += other.images

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean image (H, W, 3), mean RGB (3,), RGB covariance (3, 3)), float64 in 0-255 units."""
        if self.images == 0:
            raise ValueError("no images were added")
        pixels = self.images * self.size * self.size
        mean_image = self.sum_image[:, :, ::-1] / self.images
        mean = self.sum_image.sum(axis=(0, 1))[::-1] / pixels
        cov = self.sum_outer[::-1, ::-1] / pixels - np.outer(mean, mean)
        return mean_image, mean, cov
