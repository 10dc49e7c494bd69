"""Size buckets and the official resize + centre crop of the input picture."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fpgen.errors import InputError

# FramePack's own 640-class buckets, (height, width) in pixels, in the official order (ties go to the later one).
BUCKETS_640 = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)  # fmt: skip


def buckets_for(resolution: int) -> tuple[tuple[int, int], ...]:
    """The bucket table of a resolution class: the official one at 640, scaled to multiples of 16 otherwise."""
    if resolution == 640:
        return BUCKETS_640
    if resolution < 128 or resolution > 2048:
        raise InputError(f"--resolution {resolution} is out of range", "use a value between 128 and 2048 (640 is the official one)")
    scale = resolution / 640
    return tuple((max(16, round(h * scale / 16) * 16), max(16, round(w * scale / 16) * 16)) for h, w in BUCKETS_640)


def pick_bucket(height: int, width: int, resolution: int = 640) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to height x width (minimises |H*w - W*h|, later wins ties)."""
    best, best_metric = None, float("inf")
    for bucket_h, bucket_w in buckets_for(resolution):
        metric = abs(height * bucket_w - width * bucket_h)
        if metric <= best_metric:
            best, best_metric = (bucket_h, bucket_w), metric
    return best


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (height x width in pixels, each a multiple of 16)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {text!r} is not HxW", "write the height and width in pixels, e.g. 640x608") from None
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise InputError(f"--size {text} must be positive multiples of 16", "e.g. 640x608 or 480x832")
    return height, width


def load_image(path) -> np.ndarray:
    """Read a picture as uint8 RGB (H, W, 3), EXIF orientation applied and alpha dropped, as the official UI does."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.array(image.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"image not found: {path}", "check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not an image", "pass a PNG, JPEG or WebP file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as an image ({type(exc).__name__})", "pass a PNG, JPEG or WebP file") from None


def resize_and_center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale to cover height x width with Lanczos, then crop the centre (the official float crop box)."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil = Image.fromarray(image)
    scale = max(width / pil.width, height / pil.height)
    resized_w, resized_h = int(round(pil.width * scale)), int(round(pil.height * scale))
    pil = pil.resize((resized_w, resized_h), Image.LANCZOS)
    box = ((resized_w - width) / 2, (resized_h - height) / 2, (resized_w + width) / 2, (resized_h + height) / 2)
    return np.array(pil.crop(box))
