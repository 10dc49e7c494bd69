"""Reading start pictures: every mode PIL reads becomes the right 8-bit RGB (or a clear refusal), huge ones are refused from their header."""

from __future__ import annotations

import struct
import subprocess
import zlib

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from fpgen.buckets import MAX_PICTURE_PIXELS, load_picture, rgb8
from fpgen.errors import InputError

RAMP8 = np.tile(np.arange(256, dtype=np.uint8), (4, 1))  # (4, 256): every 8-bit level once per row
RAMP16 = RAMP8.astype(np.uint16) * 257  # the same levels at 16-bit full scale


def gray(pixels: np.ndarray) -> np.ndarray:
    """The one channel of a gray RGB picture (and a check that it is gray)."""
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    return pixels[..., 0].astype(int)


SIXTEEN_BIT = {  # the files: how PIL opens them, and the pixels written (PIL's own convert to I;16B clips, so it gets bytes)
    "I;16": ("png", lambda: Image.fromarray(RAMP16)),
    "I;16B": ("tif", lambda: Image.frombytes("I;16B", (256, 4), RAMP16.astype(">u2").tobytes())),
    "I": ("tif", lambda: Image.fromarray(RAMP16.astype(np.int32), mode="I")),
}


@pytest.mark.parametrize("mode", SIXTEEN_BIT)
def test_16_bit_gray_is_scaled_not_clipped(tmp_path, mode):
    suffix, make = SIXTEEN_BIT[mode]
    make().save(tmp_path / f"ramp.{suffix}")
    assert Image.open(tmp_path / f"ramp.{suffix}").mode == mode
    picture = load_picture(tmp_path / f"ramp.{suffix}")
    assert np.abs(gray(picture.pixels) - RAMP8).max() <= 1  # convert("RGB") made everything from level 1 up white
    assert picture.notes == ()


def test_float_gray_in_0_1_is_scaled_and_other_ranges_are_refused(tmp_path):
    Image.fromarray((RAMP8 / 255).astype(np.float32), mode="F").save(tmp_path / "unit.tif")
    assert np.abs(gray(load_picture(tmp_path / "unit.tif").pixels) - RAMP8).max() <= 1
    Image.fromarray(RAMP8.astype(np.float32) * 4, mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(InputError, match=r"from 0 to 1020.*8- or 16-bit"):
        load_picture(tmp_path / "hdr.tif")


def test_32_bit_integers_past_16_bits_are_refused(tmp_path):
    Image.fromarray(RAMP8.astype(np.int32) * 1_000_000, mode="I").save(tmp_path / "wide.tif")
    with pytest.raises(InputError, match="from 0 to 2.55e[+]08"):
        load_picture(tmp_path / "wide.tif")


def test_48_bit_rgb_png_reads_as_its_8_bit_levels(tmp_path):
    """PIL opens 16-bit-per-channel RGB PNGs as 8-bit RGB itself (ffmpeg writes the file: PIL cannot)."""
    rgb48 = np.stack([RAMP16, RAMP16[:, ::-1], np.full_like(RAMP16, 40000)], axis=-1).astype(">u2")
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb48be", "-s", "256x4", "-i", "-", "-frames:v", "1", str(tmp_path / "deep.png")]
    subprocess.run(command, input=rgb48.tobytes(), check=True)
    assert Image.open(tmp_path / "deep.png").mode == "RGB"
    pixels = load_picture(tmp_path / "deep.png").pixels.astype(int)
    assert np.abs(pixels[..., 0] - RAMP8).max() <= 1 and np.abs(pixels[..., 1] - RAMP8[:, ::-1]).max() <= 1
    assert np.abs(pixels[..., 2] - 40000 / 257).max() <= 1


ORANGE = (200, 100, 50)


@pytest.mark.parametrize(("mode", "suffix"), [("RGB", "png"), ("CMYK", "tif"), ("YCbCr", "tif"), ("LAB", "tif"), ("P", "gif")])
def test_colour_modes_read_as_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"orange.{suffix}"
    Image.new("RGB", (8, 8), ORANGE).convert(mode, palette=Image.Palette.ADAPTIVE).save(path)
    assert Image.open(path).mode == mode
    assert np.abs(load_picture(path).pixels.astype(int) - ORANGE).max() <= 3  # the round trips through CMYK, YCbCr and LAB lose a little


def test_hsv_and_rgbx_read_as_rgb():
    """No format PIL writes stores HSV or RGBX, so those are made in memory."""
    for mode in ("HSV", "RGBX"):
        assert np.abs(rgb8(Image.new("RGB", (8, 8), ORANGE).convert(mode), "memory")[0].astype(int) - ORANGE).max() <= 2


def test_one_bit_and_8_bit_gray(tmp_path):
    Image.fromarray(RAMP8).save(tmp_path / "l.png")
    assert np.array_equal(gray(load_picture(tmp_path / "l.png").pixels), RAMP8)
    Image.fromarray(RAMP8 >= 128).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    assert np.array_equal(gray(load_picture(tmp_path / "bits.png").pixels), np.where(RAMP8 >= 128, 255, 0))


def test_transparency_is_composited_on_black_and_said(tmp_path):
    half = np.zeros((2, 2, 4), np.uint8)
    half[..., :3] = ORANGE
    half[..., 3] = [[255, 128], [0, 255]]
    Image.fromarray(half, "RGBA").save(tmp_path / "rgba.png")
    picture = load_picture(tmp_path / "rgba.png")
    assert picture.pixels[0, 0].tolist() == list(ORANGE) and picture.pixels[1, 0].tolist() == [0, 0, 0]
    assert np.abs(picture.pixels[0, 1].astype(int) - np.array(ORANGE) * 128 / 255).max() <= 1
    assert any("composited on black" in note for note in picture.notes)

    Image.fromarray(np.stack([RAMP8, np.full_like(RAMP8, 255)], axis=-1), "LA").save(tmp_path / "opaque.png")
    assert load_picture(tmp_path / "opaque.png").notes == ()  # an alpha channel that hides nothing is not worth a warning

    palette = Image.new("P", (2, 1))
    palette.putpalette([*ORANGE, 0, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)  # palette entry 0 (orange) is transparent
    assert load_picture(tmp_path / "p.png").pixels[0].tolist() == [[0, 0, 0], [0, 0, 0]]
    pa = Image.fromarray(half, "RGBA").convert("PA")  # PIL writes no PA file
    assert rgb8(pa, "memory")[0][1, 0].tolist() == [0, 0, 0]


def test_exif_orientation_is_applied_to_16_bit_pictures_too(tmp_path):
    levels = np.tile(np.arange(6) * 40, (4, 1))  # (4, 6): dark on the left, light on the right
    for name, data in (("deep.png", (levels * 257).astype(np.uint16)), ("plain.jpg", levels.astype(np.uint8))):
        image = Image.fromarray(data)
        exif = image.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        image.save(tmp_path / name, exif=exif)
        pixels = load_picture(tmp_path / name).pixels
        assert pixels.shape == (6, 4, 3)
        assert abs(int(pixels[-1, 0, 0]) - int(pixels[0, 0, 0])) > 100  # the ramp now runs down the rows


@pytest.mark.parametrize("suffix", ["gif", "webp"])
def test_animated_pictures_use_the_first_frame_and_say_so(tmp_path, suffix):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (ORANGE, (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / f"anim.{suffix}", save_all=True, append_images=frames[1:], lossless=True)
    picture = load_picture(tmp_path / f"anim.{suffix}")
    assert np.abs(picture.pixels.astype(int) - ORANGE).max() <= 3
    assert any("3 frames" in note and "first frame" in note for note in picture.notes)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds one row: what a decompression bomb's header looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height", "megapixels"), [(20000, 20000, 400), (11000, 10000, 110)])
def test_huge_pictures_are_refused_from_their_header(tmp_path, width, height, megapixels):
    """400 MP is past PIL's own bomb limit (PIL raises), 110 MP only past fpgen's: both are one InputError naming size and limit."""
    (tmp_path / "bomb.png").write_bytes(png_header(width, height))
    with pytest.raises(InputError, match=rf"{megapixels}-megapixel picture, over fpgen's limit of {MAX_PICTURE_PIXELS // 10**6} megapixels"):
        load_picture(tmp_path / "bomb.png")
