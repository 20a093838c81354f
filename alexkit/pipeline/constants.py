"""Numbers of the paper's preprocessing, in 0-255 pixel units, and the store's other defaults."""

STORE_SIZE = 256  # shorter side resized to 256, then a centre 256x256 crop
STORE_FORMAT = "jpg"  # images stored as JPEG ("raw": the pixels themselves)
STORE_QUALITY = 90  # JPEG quality: 90 or more keeps JPEG artefacts negligible
LIGHTING_STD = 0.1  # the standard deviation of alpha_i (normal, mean 0): per principal component, per image, per use
STORE_FORMAT_VERSION = 1  # bump when the store's files or their meaning change


def crop_size(size: int) -> int:
    """The network's input side for a store of `size`: 7/8 of it (256 -> 224, 64 -> 56)."""
    return size * 7 // 8


def size_for_crop(crop: int) -> int:
    """The smallest store side whose crops are at least `crop` (36 -> 42)."""
    return -(-crop * 8 // 7)
