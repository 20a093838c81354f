"""The DALI graphs: a stored image (JPEG bytes or raw pixels) -> mean-subtracted float views.

One graph per mode, the same on CPU and GPU (only the operators' device changes; on the CPU,
with fused, each graph does its float work in one Numba-compiled operator, see below):
  train    crop CxC at a drawn corner, mirror with p = 0.5, add the PCA lighting shift,
           subtract the mean image cropped and mirrored identically   -> (N, 3, C, C)
  center   the centre CxC window minus the mean image's centre window  -> (N, 3, C, C)
  tencrop  the four corners and the centre, then the same five windows
           mirrored (augment.TEN_VIEWS), each minus its mean window     -> (N, 10, 3, C, C)
With channels_last the channel axis comes last instead: (N, C, C, 3) and (N, 10, C, C, 3).
What every graph computes is defined in a few lines of NumPy, augment.reference_crop (one view);
the tests compare each graph and each of its code paths with it. Read that first: the rest of this
file is about speed.

The graphs draw no random numbers. Their inputs come from one `fn.external_source` per batch:
the stored bytes, and for train the crop corners, flips and lighting offsets drawn in
augment.train_params (see train_inputs / eval_inputs). The batch's sample indices ride along
as a second output, so images and indices cannot get out of step.

Why the work is laid out this way (measured on 2 CPU cores, 256 -> 224; alexkit bench loader):
- Everything after decoding touches only the CxC window, never the whole SxS image: converting
  the full image to float and subtracting the mean before cropping is about 2x slower.
- The CPU decoder decodes only the window (decoders.image_crop: libjpeg-turbo skips the rest;
  the pixels equal a full decode's, tested), about 8% less decoding. The GPU ("mixed") decoder
  decodes whole images: a decode with a crop can take the hardware JPEG engines out of play.
- crop_mirror_normalize cuts the window, mirrors it and lays it out (HWC -> CHW) in one pass,
  and pixels stay uint8 until the one float operation, the subtraction: a uint8 view is a quarter
  of a float32 one (ten views of 128 images: 193 MB against 771 MB).
- Train on the CPU: one pass after decoding (JPEG) or straight from the stored pixels (raw).
  DALI's own operators need two (JPEG: the window minus the mean window, then a
  crop_mirror_normalize that mirrors, lays out and adds the lighting shift), each re-reading and
  re-writing 600 KB of float32 per 224 view; memory traffic, not arithmetic, is what they cost.
  One Numba-compiled kernel run by DALI's numba_function operator (kernel.py) reads the uint8
  window and the float mean window once and writes the output once:
  out[:, h, w'] = pixel[y + h, x + w] - mean[y + h, x + w] + offset, w' = C - 1 - w if mirrored,
  the same float32 arithmetic as the two-operator graph (identical outputs from JPEG; from raw
  pixels that graph computes pixel - (mean - offset), equal within float32 rounding; tested).
  `alexkit bench loader` (train, 2 cores, CPU ms per image, operators only -> kernel; README's
  table): JPEG store 0.49 -> 0.42, raw store 0.28 -> 0.13. Compiled once per process and layout
  (about 2 s).
  Without numba, or with fused=False, DALI's operators run instead.
  The mean windows cost no pass: a table holds, for every left edge x, the columns [x, x + C) of the
  mean image made contiguous (S - C + 1 arrays of S x C x 3 float32, 23 MB at 256 -> 224), so the
  window at (x, y) is the contiguous rows [y, y + C) of one of them, fed to DALI per sample as a view,
  never copied (see _TrainSource).
- Center and tencrop on the CPU: the same kernel, with a zero offset and the fixed mean
  windows and corners as graph constants (it cuts V views per sample: 1 for train and center,
  10 for tencrop). For center it reads the decoded window (JPEG) or the stored pixels (raw),
  which saves crop_mirror_normalize's uint8 pass; for tencrop it cuts all ten views from the
  decoded image and writes each once, where DALI's operators write ten uint8 views, stack them,
  then subtract. (The loader runs it for an evaluation pass only where that pays for the
  compilation: loader.KERNEL_PAYS_VIEWS.) CPU ms per image,
  operators only -> kernel (README's table): center JPEG 0.45 -> 0.38, raw 0.13 -> 0.08; tencrop
  JPEG 2.45 -> 1.46, raw 1.88 -> 1.03.
- Elsewhere (on the GPU, where feeding 77 MB of mean windows per batch would cost a
  host-to-device copy; center and tencrop; train from raw pixels on the CPU without the
  kernel) the per-pixel mean image is a graph constant (made once, then shared, never copied
  per batch). For train its window moves with the image's, so a second crop_mirror_normalize
  cuts the same window from the constant and, on the way, subtracts the lighting shift (its
  per-channel `mean` argument): views = pixels - (mean - offset). For center and tencrop the
  windows are fixed, so the cut mean windows themselves are the constants.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from alexkit.errors import AlexkitError, require
from alexkit.pipeline.augment import center_corner, ten_view_windows
from alexkit.pipeline.kernel import one_pass_op

Mode = Literal["train", "center", "tencrop"]
MODES = ("train", "center", "tencrop")
DALI_FIX = "install it with `pip install nvidia-dali-cuda130==2.4.*` (it also runs without a GPU)"


@dataclass(frozen=True)
class GraphConfig:
    """What one DALI pipeline computes and how it runs.

    encoded: the stored samples are JPEG bytes (decoded by `decoder`) rather than raw pixels.
    device_id: the CUDA device that runs the operators, or None for CPU operators only.
    decoder: "cpu" (libjpeg-turbo in DALI's threads) or "mixed" (nvJPEG and the hardware JPEG
      engines where present; needs device_id).
    prefetch: batches DALI prepares ahead of the one being consumed.
    fused: on the CPU the float work after decoding is one Numba-compiled pass (kernel.py) where
      numba is installed; False: DALI's own operators only (the same outputs, more passes).
    """

    mode: Mode
    size: int
    crop: int
    encoded: bool
    decoder: Literal["cpu", "mixed"] = "cpu"
    device_id: int | None = None
    channels_last: bool = False
    batch_size: int = 128
    num_threads: int = 2
    prefetch: int = 2
    fused: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise AlexkitError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0 < self.crop <= self.size:
            raise AlexkitError(f"crop {self.crop} must be between 1 and the stored size {self.size}")
        if self.decoder not in ("cpu", "mixed"):
            raise AlexkitError(f"decoder {self.decoder!r} is not one of cpu, mixed")
        if self.decoder == "mixed" and self.device_id is None:
            raise AlexkitError("decoder 'mixed' decodes on a GPU; pass a CUDA device or use decoder 'cpu'")
        for name in ("batch_size", "num_threads", "prefetch"):
            if getattr(self, name) < 1:
                raise AlexkitError(f"{name} must be at least 1, got {getattr(self, name)}")


def _positions(corner, size: int, crop: int) -> np.ndarray:
    """Pixel corners -> crop_mirror_normalize's normalised positions corner / (size - crop).

    The operator multiplies back and rounds to the nearest integer, which recovers the exact
    corner: the float32 error is far below half a pixel for any realistic image side.
    """
    corner = np.asarray(corner, dtype=np.float64)
    return (corner / (size - crop) if size > crop else np.zeros_like(corner)).astype(np.float32)


def train_inputs(data: list, index, x, y, flip, offset) -> tuple:
    """One batch for the train graph: stored samples, indices (n,), pixel corners x, y (n,), flips
    (n,), lighting offsets (n, 3). The graph's source (_TrainSource) derives what its operators take."""
    return (
        data,
        np.ascontiguousarray(x, dtype=np.intp),
        np.ascontiguousarray(y, dtype=np.intp),
        np.ascontiguousarray(flip, dtype=np.int32),
        np.ascontiguousarray(offset, dtype=np.float32),
        np.ascontiguousarray(index, dtype=np.int64),
    )


def eval_inputs(data: list, index) -> tuple:
    """One batch for the center / tencrop graphs: stored samples and their indices."""
    return data, np.ascontiguousarray(index, dtype=np.int64)


def build_graph(cfg: GraphConfig, mean_image: np.ndarray, source: Callable[[], tuple], *, no_copy: bool = False):
    """A DALI Pipeline whose outputs are (views, indices); `source()` returns the next batch
    (train_inputs / eval_inputs) or raises StopIteration at the end of an epoch.

    no_copy: DALI reads the batch's arrays in place instead of copying them first (for raw pixels
    that copy is a tenth of the work); the graph then keeps its last prefetch + 2 batches
    referenced (_Kept), so none is freed before the pipeline has consumed it.
    """
    require("nvidia.dali", fix=DALI_FIX)
    from nvidia.dali import Pipeline

    S = cfg.size
    if mean_image.shape != (S, S, 3):
        raise AlexkitError(f"the mean image is {mean_image.shape}, expected ({S}, {S}, 3): the store's stats.npz "
                           f"does not match its images; re-run `alexkit prepare`")  # fmt: skip
    # exec_dynamic: outputs stay valid while referenced, so torch can take them over by DLPack.
    pipe = Pipeline(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=cfg.device_id,
                    prefetch_queue_depth=cfg.prefetch, exec_dynamic=True, seed=0)  # fmt: skip
    with pipe:
        graph = _Graph(cfg, mean_image)
        if cfg.mode == "train":
            source = _TrainSource(source, graph.input_names, mean_image, S, cfg.crop)
        if no_copy:
            source = _Kept(source, cfg.prefetch + 2)  # outermost: it keeps what DALI is given
        inputs = dict(zip(graph.input_names, graph.inputs(source, no_copy)))
        index = inputs.pop("index")
        views = {"train": graph.train_views, "center": graph.center_views, "tencrop": graph.ten_views}[cfg.mode](**inputs)
        pipe.set_outputs(views, index)
    return pipe


class _Graph:
    """The operators of build_graph, one method per step, on the device the config names."""

    def __init__(self, cfg: GraphConfig, mean_image: np.ndarray):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        self.fn, self.types, self.cfg, self.mean_image = fn, types, cfg, mean_image
        self.device = "cpu" if cfg.device_id is None else "gpu"
        self.layout = "HWC" if cfg.channels_last else "CHW"  # of each output view
        # On the CPU: the one-pass kernel where numba is installed, else DALI's operators.
        self.kernel = one_pass_op(cfg.channels_last) if self.device == "cpu" and cfg.fused else None
        self.route = _train_route(cfg, self.device, self.kernel is not None) if cfg.mode == "train" else None
        self.input_names = ["data"] + (_TRAIN_INPUTS[self.route](cfg.encoded) if self.route else []) + ["index"]

    def inputs(self, source, no_copy: bool):
        """One DataNode per name in input_names, from the per-batch source (see _INPUT_SPECS)."""
        t, cfg = self.types, self.cfg
        specs = {**_INPUT_SPECS, "data": ("UINT8", 1, "") if cfg.encoded else ("UINT8", 3, "HWC")}
        specs = [specs[name] for name in self.input_names]
        return self.fn.external_source(source=source, num_outputs=len(specs), batch=True, no_copy=no_copy,
                                       dtype=[getattr(t, dtype) for dtype, _, _ in specs], ndim=[ndim for _, ndim, _ in specs],
                                       layout=[layout for _, _, layout in specs])  # fmt: skip

    def stored_image(self, data):
        """The stored SxS image as uint8 HWC on the operators' device: decoded, or raw pixels as they are."""
        fn, cfg = self.fn, self.cfg
        if not cfg.encoded:
            image = data
        elif cfg.decoder == "mixed":
            # Fancy upsampling makes nvJPEG's chroma match libjpeg-turbo (the CPU decoder, and PIL).
            return fn.decoders.image(data, device="mixed", output_type=self.types.RGB, adjust_orientation=False,
                                     jpeg_fancy_upsampling=True, preallocate_width_hint=cfg.size,
                                     preallocate_height_hint=cfg.size)  # fmt: skip
        else:
            image = fn.decoders.image(data, device="cpu", output_type=self.types.RGB, adjust_orientation=False)
        return image.gpu() if self.device == "gpu" else image

    def stored_window(self, data, pos_x, pos_y, mirror):
        """The CxC window of each stored image at normalised positions, mirrored if asked: uint8 in
        the output layout. The CPU decoder decodes only the window (libjpeg-turbo skips the rest;
        the pixels equal those of a full decode, tested), about 8% less decoding. The GPU decoder
        decodes whole images, which keeps the hardware JPEG engines in play."""
        if not (self.cfg.encoded and self.cfg.decoder == "cpu"):
            return self.window(self.stored_image(data), pos_x, pos_y, mirror)
        part = self.decoded_window(data, pos_x, pos_y)
        part = part.gpu() if self.device == "gpu" else part
        return self.fn.crop_mirror_normalize(part, mirror=mirror, dtype=self.types.UINT8, output_layout=self.layout)

    def constant(self, array: np.ndarray, layout: str):
        """A graph constant: made once, then shared by every sample of every batch."""
        return self.types.Constant(np.ascontiguousarray(array, dtype=np.float32), layout=layout, device=self.device)

    def window(self, image, pos_x, pos_y, mirror, **kw):
        """The CxC window at normalised positions (see _positions), mirrored if asked, in the output
        layout; uint8 unless kw gives another dtype."""
        C = self.cfg.crop
        kw.setdefault("dtype", self.types.UINT8)
        return self.fn.crop_mirror_normalize(image, crop=(C, C), crop_pos_x=pos_x, crop_pos_y=pos_y, mirror=mirror,
                                             output_layout=self.layout, **kw)  # fmt: skip

    def fixed(self, x: int, y: int, flip: bool) -> tuple[float, float, int]:
        """Window arguments for the top-left corner at pixel (x, y), the same for every sample."""
        S, C = self.cfg.size, self.cfg.crop
        return float(_positions(x, S, C)), float(_positions(y, S, C)), int(flip)

    def mean_windows(self, windows, *, for_kernel: bool = False) -> np.ndarray:
        """The mean image's fixed windows [(x, y, flip), ...], cut in NumPy: mirrored and in the
        output layout, or for the kernel (which mirrors and lays out itself) as they are, HWC."""
        C = self.cfg.crop
        cut = [self.mean_image[y : y + C, x : x + C] for x, y, _ in windows]
        if for_kernel:
            return np.stack(cut)  # (V, C, C, 3)
        cut = [w[:, ::-1] if f else w for w, (_, _, f) in zip(cut, windows)]
        return np.stack([w if self.cfg.channels_last else w.transpose(2, 0, 1) for w in cut])  # (V, 3, C, C) or (V, C, C, 3)

    def kernel_views(self, mean_windows, data, corners, offset=None, *, one: bool):
        """The one-pass kernel: views (V, 3, C, C) float, or with one (V = 1) a single view (3, C, C);
        channels-last (V, C, C, 3) and (C, C, 3). offset None: no lighting shift."""
        offset = self.constant(np.zeros(3), "") if offset is None else offset
        views = self.kernel(mean_windows, data, corners, offset)
        return self.fn.squeeze(views, axes=[0]) if one else views

    def train_views(self, **inputs):
        """(3, C, C) float per sample by the route _train_route chose, from the inputs it names."""
        return {"kernel": self.train_by_kernel, "fed": self.train_fed_mean, "constant": self.train_constant_mean}[self.route](**inputs)

    def train_by_kernel(self, data, offset, mean_windows, corners, crop_x=None, crop_y=None):
        """One pass: window, mirror, layout, minus the mean window, plus the offset."""
        if self.cfg.encoded:  # the decoder cuts the window; corners hold (0, 0, mirror)
            data = self.decoded_window(data, crop_x, crop_y)
        return self.kernel_views(mean_windows, data, corners, offset, one=True)  # (3, C, C) float

    def train_fed_mean(self, data, crop_x, crop_y, mirror, offset, mean_window):
        """DALI's operators, the mean window fed per sample: (C, C, 3) float32, not mirrored."""
        centred = self.decoded_window(data, crop_x, crop_y) - mean_window  # (C, C, 3) float
        # The operator subtracts its `mean` argument: centred - (-offset) = pixels + offset - mean.
        return self.fn.crop_mirror_normalize(centred, mirror=mirror, mean=-offset, dtype=self.types.FLOAT, output_layout=self.layout)

    def train_constant_mean(self, data, crop_x, crop_y, mirror, offset):
        """DALI's operators, the mean window cut from the mean image held as a graph constant."""
        pixels = self.stored_window(data, crop_x, crop_y, mirror)  # (3, C, C) uint8
        # The mean image's identical window minus the lighting shift (the operator subtracts its
        # per-channel `mean` argument): pixels - (mean - offset) = pixels + offset - mean.
        mean_less_light = self.window(self.constant(self.mean_image, "HWC"), crop_x, crop_y, mirror, mean=offset, dtype=self.types.FLOAT)
        return pixels - mean_less_light  # (3, C, C) float

    def decoded_window(self, data, crop_x, crop_y):
        """The CxC window of each stored JPEG, decoded on the CPU: (C, C, 3) uint8, not mirrored."""
        C, t = self.cfg.crop, self.types
        return self.fn.decoders.image_crop(data, crop=(C, C), crop_pos_x=crop_x, crop_pos_y=crop_y, device="cpu",
                                           output_type=t.RGB, adjust_orientation=False)  # fmt: skip

    def center_views(self, data):
        m = center_corner(self.cfg.size, self.cfg.crop)
        if self.kernel is not None:  # one pass: window, layout, minus mean window
            at = m
            if self.cfg.encoded:  # the decoder cuts the window, which then starts at (0, 0)
                data, at = self.decoded_window(data, *self.fixed(m, m, False)[:2]), 0
            mean = self.constant(self.mean_windows([(m, m, False)], for_kernel=True), "FHWC")
            return self.kernel_views(mean, data, self.types.Constant(np.array([[at, at, 0]], np.int32)), one=True)
        pixels = self.stored_window(data, *self.fixed(m, m, False))  # (3, C, C) uint8
        return pixels - self.constant(self.mean_windows([(m, m, False)])[0], self.layout)  # float

    def ten_views(self, data):
        image = self.stored_image(data)  # decoded once, whole: ten windows cover all of it
        windows = ten_view_windows(self.cfg.size, self.cfg.crop)
        if self.kernel is not None:  # one pass per view: window, mirror, layout, minus mean window
            means = self.constant(self.mean_windows(windows, for_kernel=True), "FHWC")
            return self.kernel_views(means, image, self.types.Constant(np.array(windows, np.int32)), one=False)
        views = self.fn.stack(*[self.window(image, *self.fixed(x, y, f)) for x, y, f in windows])  # (10, 3, C, C) uint8
        return views - self.constant(self.mean_windows(windows), "F" + self.layout)  # float


# The graph's per-batch inputs: DALI dtype name, dimensions per sample, layout ("data" depends
# on the store: JPEG bytes (ndim 1) or raw HWC pixels).
_INPUT_SPECS = {
    "crop_x": ("FLOAT", 0, ""), "crop_y": ("FLOAT", 0, ""),  # normalised corners (see _positions)
    "mirror": ("INT32", 0, ""),
    "offset": ("FLOAT", 1, ""),  # (3,) lighting shift
    "mean_window": ("FLOAT", 3, "HWC"),  # (C, C, 3), not mirrored
    "mean_windows": ("FLOAT", 4, "FHWC"),  # (1, C, C, 3): the same, for the kernel
    "corners": ("INT32", 2, ""),  # (1, 3): x, y of the window in the data, mirror
    "index": ("INT64", 0, ""),
}  # fmt: skip


def _train_route(cfg: GraphConfig, device: str, kernel: bool) -> str:
    """How the train graph subtracts each sample's mean window: "kernel" (the one-pass CPU kernel, the
    window fed per sample), "fed" (DALI's CPU operators from JPEG, the window fed per sample), or
    "constant" (the mean image a graph constant: on the GPU, and from raw pixels on the CPU without
    the kernel)."""
    if kernel:
        return "kernel"
    return "fed" if device == "cpu" and cfg.encoded else "constant"


# The train graph's inputs between "data" and "index", by route, from whether the store is JPEG.
_TRAIN_INPUTS = {
    # the decoder needs the normalised corner; raw pixels only the pixel corner (in `corners`)
    "kernel": lambda encoded: (["crop_x", "crop_y"] if encoded else []) + ["offset", "mean_windows", "corners"],
    "fed": lambda encoded: ["crop_x", "crop_y", "mirror", "offset", "mean_window"],
    "constant": lambda encoded: ["crop_x", "crop_y", "mirror", "offset"],
}


class _TrainSource:
    """Turns a train source's batches (train_inputs) into the inputs the graph names: the corners
    normalised for DALI's crop operators, and each sample's mean window and corners where the
    graph takes them.

    Mean windows: (C, C, 3) float32 HWC (the kernel's: (1, C, C, 3)), not mirrored, views that
    DALI reads in place. by_x[x] holds the columns [x, x + C) of the mean image, made contiguous:
    (S, C, 3); its rows [y, y + C) are one contiguous block, the window at (x, y). The table (S - C + 1
    arrays, 23 MB at 256 -> 224) lives as long as the pipeline, so the views stay valid with no_copy.
    """

    def __init__(self, source: Callable[[], tuple], names: list[str], mean_image: np.ndarray, size: int, crop: int):
        self.source, self.names, self.size, self.crop = source, names, size, crop
        fed = "mean_window" in names or "mean_windows" in names
        self.by_x = [np.ascontiguousarray(mean_image[:, x : x + crop], dtype=np.float32) for x in range(size - crop + 1)] if fed else []

    def __call__(self) -> tuple:
        data, xs, ys, mirror, offset, index = self.source()
        batch = dict(data=data, mirror=mirror, offset=offset, index=index)
        if "crop_x" in self.names:
            batch["crop_x"], batch["crop_y"] = (_positions(p, self.size, self.crop) for p in (xs, ys))
        if "mean_window" in self.names:
            batch["mean_window"] = [self.by_x[x][y : y + self.crop] for x, y in zip(xs.tolist(), ys.tolist())]
        if "mean_windows" in self.names:  # the kernel's (1, C, C, 3): the same views, one axis more
            batch["mean_windows"] = [self.by_x[x][None, y : y + self.crop] for x, y in zip(xs.tolist(), ys.tolist())]
        if "corners" in self.names:
            cut = "crop_x" in self.names  # JPEG: the decoder already cut the window, which starts at (0, 0)
            zero = np.zeros_like(xs)
            batch["corners"] = np.stack([zero if cut else xs, zero if cut else ys, mirror], axis=1).astype(np.int32)[:, None]  # (n, 1, 3)
        return tuple(batch[name] for name in self.names)


class _Kept:
    """A source whose last `n` batches stay referenced: with no_copy DALI reads the fed arrays in
    place, and the pipeline has consumed a batch prefetch + 1 calls later."""

    def __init__(self, source: Callable[[], tuple], n: int):
        self.source, self.batches = source, deque(maxlen=n)

    def __call__(self) -> tuple:
        batch = self.source()
        self.batches.append(batch)
        return batch
