"""The per-image work of `alexkit prepare`, run in worker processes.

One image: decode whatever the file holds (JPEG in RGB, grayscale or CMYK, progressive or not; PNG
or another format under a .JPEG name; palette and alpha images) to RGB, resize the shorter side to
`size` and cut the centred `size` x `size` square, then encode it as JPEG or keep the raw pixels.

The resize is antialiased bilinear, PIL's definition: when shrinking by a factor f the triangle
kernel is widened to 2f source pixels, so every source pixel contributes (torchvision's
`Resize(256)` does the same on PIL images). Smaller images are upscaled with the same filter.
Why this one: area averaging (OpenCV's INTER_AREA, what FFCV resizes with) saves little time and
aliases visibly on a zone plate; bicubic and Lanczos cost more resize time. It runs as torch's
uint8 kernel for this filter (vectorised, several times faster than PIL's on an ImageNet-sized
photo), which computes the same weights as PIL and differs from PIL's "resize, then crop" only in
rounding: by at most 1 grey level at nearly every pixel, 2 at a few pixels of some images (tested:
`test_prepare.py::test_resize_and_crop_match_pil_reference`). Alpha is dropped, as
`Image.convert("RGB")` does in every common ImageNet loader; EXIF orientation is ignored, as PIL
does.

Decoding: plain RGB and grayscale JPEGs (nearly all of ImageNet) are decoded by OpenCV's
libjpeg-turbo; everything else (CMYK, PNG, palette, alpha, 16-bit ...) by PIL, then converted to
RGB (16-bit grey keeps its top 8 bits: PIL's own conversion would clip it at 255, to white).
`Image.open` reads only the header, so choosing costs next to nothing. Both decoders give the same
pixels for baseline and progressive JPEGs (tested). prepare skips an image whose sides are more than
MAX_ASPECT times apart: its centre crop would hold a sliver of it, and the resize up to the crop's
far edge grows with the ratio (gigabytes at 1:60,000).

Two shortcuts, both giving the result of "resize the whole image, then crop":
  - Only the rows and columns under the crop are computed (the output stops at the crop's far
    edge), with the kernel positions of the full resize.
  - A JPEG much larger than needed is decoded by libjpeg at 1/2, 1/4 or 1/8 scale
    (`IMREAD_REDUCED_*`, or `Image.draft` on the PIL path) while the decoded image keeps at least
    DRAFT_MARGIN (2) times the resized size, so the bilinear filter still does the antialiasing.
    Large photos save decoding time this way (most of ImageNet is smaller and decodes in full);
    a margin of 1 would let the reduced decode's own filtering show. The resize keeps the exact
    source scale, so the reduced decode shifts nothing.

JPEG output: OpenCV's libjpeg-turbo encoder, quality `quality`, baseline, 4:2:0 chroma
subsampling; byte for byte what PIL's `save(quality=...)` writes (tested), and a little faster.

`PixelSums` accumulates the training-set statistics from the resized pixels before JPEG encoding
(the raw pixels of a raw store): the sum image and the sums of x and x x^T over all pixels, in
float64 (exact here), merged across processes. This saves decoding every image a second time.
`alexkit bench prepare` prints how far these statistics are from the same ones over the pixels
decoded back from the stored JPEGs (README quotes its figures: the mean image within 0.75 grey
levels; JPEG error is nearly zero-mean, while 4:2:0 subsampling removes some chroma variance).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings

import numpy as np
from PIL import Image

FILTER = Image.Resampling.BILINEAR  # the definition (PIL), used by references and baselines
DRAFT_MARGIN = 2  # decode at reduced scale only while keeping >= 2x the resized size per side
FILTER_NAME = "PIL bilinear, antialiased (triangle kernel widened by the shrink factor)"
REASON_CHARS = 200  # a skipped file's reason is cut to one short line
MAX_ASPECT = 100  # longer side / shorter side; panoramas are about 10


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to `size`; the longer side is rounded, >= size."""
    scale = size / min(width, height)
    if width <= height:
        return size, max(size, round(height * scale))
    return max(size, round(width * scale)), size


def crop_origin(resized: tuple[int, int], size: int) -> tuple[int, int]:
    """Top-left corner (x, y) of the centred size x size crop in an image of size `resized`."""
    return (resized[0] - size) // 2, (resized[1] - size) // 2


def draft_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The smallest decoded size asked of libjpeg's scaled decode."""
    rw, rh = resized_size(width, height, size)
    return DRAFT_MARGIN * rw, DRAFT_MARGIN * rh


def draft_factor(width: int, height: int, size: int) -> int:
    """1, 2, 4 or 8: the largest libjpeg downscale keeping draft_size (the choice `Image.draft` makes)."""
    dw, dh = draft_size(width, height, size)
    fits = min(width // dw, height // dh)
    return next((f for f in (8, 4, 2) if fits >= f), 1)


class TooElongated(ValueError):
    """An image whose sides are more than MAX_ASPECT times apart (prepare skips it, predict too)."""


def decode_rgb(data: bytes, size: int, max_aspect: float | None = None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Decode an image file for a `size` store: ((h, w, 3) uint8 RGB, decoded pixels per source
    pixel (1, 1/2, 1/4 or 1/8), the source's (width, height)). `max_aspect`: TooElongated, before
    decoding, for an image whose sides are further apart."""
    import cv2

    img = Image.open(io.BytesIO(data))  # reads the header only
    width, height = img.size
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        raise TooElongated(f"a {width}x{height} image: its sides are more than {max_aspect} times apart, and its centre "
                         f"crop would hold under 1/{max_aspect} of it")  # fmt: skip
    if img.format == "JPEG":
        factor = draft_factor(width, height, size)
        if img.mode in ("RGB", "L"):  # grey comes back as 3 equal channels, like convert("RGB")
            mode = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                    8: cv2.IMREAD_REDUCED_COLOR_8}[factor]  # fmt: skip
            rgb = cv2.imdecode(np.frombuffer(data, np.uint8), mode | cv2.IMREAD_IGNORE_ORIENTATION)  # as PIL
            if rgb is not None and rgb.shape[:2] == (-(-height // factor), -(-width // factor)):
                rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR (works on any 4.x)
                return rgb, 1 / factor, (width, height)
        img.draft("RGB", draft_size(width, height, size))  # CMYK and others: PIL, reduced alike
    factor = round(width / img.size[0])  # the draft's decoded width is ceil(width / factor)
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey (some PILs open 16-bit PNGs as "I")
        grey = np.clip(np.asarray(img), 0, 65535) >> 8  # the top 8 bits, whatever the pixels hold
        img = Image.fromarray(grey.astype(np.uint8))  # mode L
    if img.mode != "RGB":
        img = img.convert("RGB")  # CMYK (Adobe-inverted ones too), L, P, RGBA, LA ...
    return np.array(img), 1 / factor, (width, height)  # decodes here; writable, as torch wants


def resize_crop(rgb: np.ndarray, scale: float, source: tuple[int, int], size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: `rgb`, a (width, height) source decoded at `scale`, resized
    (shorter side to `size`, antialiased bilinear) and centre-cropped, contiguous."""
    import torch

    width, height = source
    rw, rh = resized_size(width, height, size)
    x0, y0 = crop_origin((rw, rh), size)
    # (1, 3, h, w) uint8 viewing the (h, w, 3) array: channels-last memory, which the vectorised
    # kernel reads and keeps for its output (batch dim first, or torch takes it for channels-first)
    pixels = torch.from_numpy(rgb).unsqueeze(0).permute(0, 3, 1, 2)
    # The aten op takes the output size and the scale separately: the scale is the true one
    # (resized / source size), not (output / decoded size), which a reduced decode's rounded-up
    # size would skew; the output stops at the crop's far edge.
    scale_h, scale_w = rh / (height * scale), rw / (width * scale)
    # But torch copies an axis whose output length equals its input length, whatever the scale:
    # where that would happen at a scale other than 1 (an upscaled image whose longer side ends
    # at the crop's far edge, or a reduced decode whose shorter side comes out at `size`), one
    # more row or column is asked for and cut off; the kernel positions come from the scale alone.
    out_h = y0 + size + (y0 + size == rgb.shape[0] and scale_h != 1)
    out_w = x0 + size + (x0 + size == rgb.shape[1] and scale_w != 1)
    out = torch.ops.aten._upsample_bilinear2d_aa(pixels, (out_h, out_w), False, scale_h, scale_w)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy()[y0 : y0 + size, x0 : x0 + size])  # (size, size, 3)


def decode_resized(data: bytes, size: int, max_aspect: float | None = None) -> np.ndarray:
    """Decode an image file to RGB, shorter side to `size`, centre crop: (size, size, 3) uint8."""
    return resize_crop(*decode_rgb(data, size, max_aspect), size)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG with 4:2:0 chroma subsampling (libjpeg's default), as FFCV's writer stores."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return encoded.tobytes()


def convert(data: bytes, size: int, fmt: str, quality: int) -> tuple[bytes | np.ndarray, np.ndarray]:
    """One source file -> (what the store keeps, the (size, size, 3) uint8 RGB pixels before encoding).

    The store keeps JPEG bytes (fmt "jpg") or the pixels themselves ("raw"); the pixels also
    feed the statistics.
    """
    rgb = decode_resized(data, size, MAX_ASPECT)
    return (rgb if fmt == "raw" else encode_jpeg(rgb, quality)), rgb


def skip_reason(exc: BaseException, data: bytes | None) -> str:
    """One short line saying why a file was skipped."""
    if data is not None and len(data) == 0:
        return "empty file"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image in any format PIL can read"
    if isinstance(exc, TooElongated):
        return str(exc)[:REASON_CHARS]
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels for a photo ({exc})"[:REASON_CHARS]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:REASON_CHARS] if text else type(exc).__name__


def load_libraries() -> None:
    """In the parent, before forking workers: import what they use, so they start with it loaded,
    and make OpenCV single-threaded here. OpenCV's thread pool does not survive a fork: a child
    that reconfigures or uses a pool its parent had started hangs for ever."""
    import cv2
    import torch  # noqa: F401  (~1 s, once)

    cv2.setNumThreads(1)


def quiet_worker() -> None:
    """Per-process setup: one thread per library (the pool supplies the parallelism), no PIL warnings."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # EXIF, palette transparency and large-image warnings, per file


class DecoderMessages:
    """What native code prints to stderr while it decodes, caught per file.

    libjpeg prints its warnings ("Corrupt JPEG data: 46 extraneous bytes before marker 0xd9") to
    file descriptor 2 and decodes the image anyway; printed as they come, they would name no file
    (and break the progress bar). While this is open, fd 2 is a temporary file: take() returns
    what was written since the last take(), as one line (None for nothing), and empties it.
    `into`: that file, by name, for a caller that reads what a process printed before it crashed.
    """

    def __init__(self, into: str | None = None):
        self.into = into

    def __enter__(self) -> "DecoderMessages":
        sys.stderr.flush()
        self.file = open(self.into, "w+b") if self.into else tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def take(self) -> str | None:
        written = os.lseek(2, 0, os.SEEK_CUR)
        if written == 0:
            return None
        text = os.pread(2, written, 0)
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)
        return one_line(text)

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.close()


def one_line(printed: bytes) -> str | None:
    """What a decoder printed, as one short line; None for nothing."""
    lines = [line.strip() for line in printed.decode("utf-8", "replace").splitlines() if line.strip()]
    return "; ".join(lines)[:REASON_CHARS] or None


class PixelSums:
    """Sums over pixels in float64: per-pixel sum image, image count, sums of x x^T (RGB).

    Every term is an integer and every total stays below 2^53 for ImageNet at 256 px (sum of
    x x^T: 1.28M x 65536 pixels x 255^2 = 5.5e15), so the float64 sums are exact. The sum of x
    per channel is the sum image summed over pixels.
    """

    def __init__(self, size: int):
        self.size = size
        self.images = 0
        self.sum_image = np.zeros((size, size, 3), np.float64)
        self.sum_outer = np.zeros((3, 3), np.float64)

    def add(self, rgb: np.ndarray) -> None:
        """Add one contiguous (size, size, 3) uint8 image (OpenCV's SIMD kernels: a fraction of a millisecond at 256 px)."""
        import cv2

        cv2.accumulate(rgb, self.sum_image)
        planes = cv2.split(rgb)
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
        mean_image = self.sum_image / self.images
        mean = self.sum_image.sum(axis=(0, 1)) / pixels
        cov = self.sum_outer / pixels - np.outer(mean, mean)
        return mean_image, mean, cov
