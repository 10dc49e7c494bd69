"""Size buckets, reading the input picture (any mode PIL reads, as 8-bit RGB) and the official resize + centre crop."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fpgen.errors import InputError

# 100 megapixels (300 MB decoded): 20 times a 4K frame, far past what any bucket needs, far short of a
# decompression bomb (a 20000x20000 PNG of a few kB is 400).
MAX_PICTURE_PIXELS = 100_000_000

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


@dataclass(frozen=True)
class Picture:
    """A start or end picture as generation takes it, and what reading it lost (the CLI prints ``notes`` as warnings)."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    notes: tuple[str, ...] = ()


def load_picture(path) -> Picture:
    """Read a picture as 8-bit RGB, EXIF orientation applied; one that is too large is refused from its header, before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PICTURE_PIXELS decides, below
            with Image.open(path) as image:
                if image.width * image.height > MAX_PICTURE_PIXELS:
                    raise _too_large(path, image.width * image.height)
                frames = getattr(image, "n_frames", 1)
                pixels, notes = rgb8(ImageOps.exif_transpose(image), path)
    except Image.DecompressionBombError as error:  # PIL refuses past twice its own limit, before it tells the size but in its message
        size = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(path, int(size.group(1)) if size else 2 * Image.MAX_IMAGE_PIXELS) from None
    except FileNotFoundError:
        raise InputError(f"image not found: {path}", "check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not an image", "pass a PNG, JPEG or WebP file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as an image ({type(exc).__name__})", "pass a PNG, JPEG or WebP file") from None
    if frames > 1:
        notes += (f"{path} has {frames} frames (an animation or pages): only the first frame is used",)
    return Picture(pixels, notes)


def load_image(path) -> np.ndarray:
    """The pixels of ``load_picture``, for callers that have no use for its notes."""
    return load_picture(path).pixels


def _too_large(path, pixels: int) -> InputError:
    return InputError(
        f"{path} is a {pixels / 1e6:.0f}-megapixel picture, over fpgen's limit of {MAX_PICTURE_PIXELS / 1e6:.0f} megapixels",
        "scale it down first (FramePack works at about 0.4 megapixels)",
    )


def rgb8(image: Image.Image, path) -> tuple[np.ndarray, tuple[str, ...]]:
    """8-bit RGB from any mode PIL reads, and notes on what was lost.

    PIL's ``convert("RGB")`` clips 16- and 32-bit gray at 255 (a 16-bit picture turns white), so
    those are scaled here; transparency is composited on black (what most cut-outs store under it).
    """
    if image.mode.startswith("I") or image.mode == "F":
        gray = scaled_gray(np.asarray(image), image.mode, path)
        return np.repeat(gray[..., None], 3, axis=2), ()
    if not image.has_transparency_data:
        return np.array(image.convert("RGB")), ()
    rgba = np.asarray(image.convert("RGBA")).astype(np.uint16)
    alpha = rgba[..., 3:]
    if alpha.min() == 255:
        return rgba[..., :3].astype(np.uint8), ()
    return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8), (f"{path} has transparent parts: they are composited on black",)


def scaled_gray(values: np.ndarray, mode: str, path) -> np.ndarray:
    """16-bit (I;16*, and I holding 0..65535, as PIL reads 16-bit files) or float (F in 0..1) gray as 8-bit; other ranges are refused."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    full_scale = 1.0 if mode == "F" else 65535.0
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= full_scale):
        raise InputError(
            f"{path} holds {mode} pixels from {low:g} to {high:g}, outside the {full_scale:g} full scale fpgen reads for this mode",
            "save it as an 8- or 16-bit PNG (or a float picture in 0..1)",
        )
    return np.round(values * (255.0 / full_scale)).astype(np.uint8)


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
