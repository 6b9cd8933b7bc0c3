"""decode_image and probe_image: formats, odd pixel layouts, and refusals."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from stream_workers.decode import DecodeError, decode_image, probe_image
from tests import png


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Save a PIL image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_one_pixel_png_becomes_bgr() -> None:
    decoded = decode_image(encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"))
    assert decoded.shape == (1, 1, 3) and decoded.dtype == np.uint8
    assert decoded[0, 0].tolist() == [0, 0, 255]


def test_grayscale_is_expanded_to_three_channels() -> None:
    decoded = decode_image(encode(Image.new("L", (8, 4), 77), "PNG"))
    assert decoded.shape == (4, 8, 3)
    assert (decoded == 77).all()


def test_alpha_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 255, 255))
    decoded = decode_image(encode(image, "PNG"))
    assert decoded[0, 0].tolist() == [255, 0, 0]
    assert decoded[3, 3].tolist() == [255, 255, 255]


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"))
    assert decoded[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg_is_converted() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    blue, green, red = decode_image(data)[8, 8].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(Image.new("RGB", (40, 20), (10, 200, 10)), "JPEG", exif=exif)
    assert decode_image(data).shape == (40, 20, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(
    ("orientation", "shown"), [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))]
)
def test_probe_reports_the_size_as_shown(fmt: str, orientation: int, shown: tuple[int, int]) -> None:
    # The worker scales boxes from decoded (turned) pixels back by the uploaded width and height:
    # those must be the turned ones too, or every box on a phone photo taken upright lands wrong.
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.new("RGB", (40, 20), (10, 200, 10)), fmt, exif=exif)
    info = probe_image(data)
    assert (info.width, info.height) == shown
    assert decode_image(data).shape[:2] == (shown[1], shown[0])
    assert decode_image(data, gray=True).shape == (shown[1], shown[0])


def _png_with_exif_after_pixels(orientation: int) -> bytes:
    """A PNG whose eXIf chunk comes after its IDAT, as the PNG spec allows (Pillow writes it before)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    data = encode(Image.new("RGB", (40, 20), (10, 200, 10)), "PNG")
    end = data.rindex(b"IEND") - 4  # the IEND chunk starts with its length
    return data[:end] + png.chunk(b"eXIf", payload) + data[end:]


@pytest.mark.parametrize(("orientation", "shown"), [(1, (40, 20)), (6, (20, 40)), (8, (20, 40))])
def test_probe_finds_an_exif_chunk_after_the_pixels(orientation: int, shown: tuple[int, int]) -> None:
    data = _png_with_exif_after_pixels(orientation)
    assert data.index(b"eXIf") > data.index(b"IDAT")
    info = probe_image(data)
    assert (info.width, info.height) == shown
    assert decode_image(data).shape[:2] == (shown[1], shown[0])


def _photo_like(size: tuple[int, int]) -> Image.Image:
    """Smooth colour gradients with noise: what a JPEG of a photo holds."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], axis=2)
    noise = np.random.default_rng(1).integers(-20, 20, rgb.shape)
    return Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("fmt", "mode", "size", "max_side"),
    [
        ("JPEG", "RGB", (640, 480), 4096),
        ("JPEG", "RGB", (640, 480), 420),  # decoded whole, then shrunk
        ("JPEG", "RGB", (3000, 2000), 1024),  # DCT-reduced, then shrunk
        ("JPEG", "L", (300, 200), 4096),
        ("JPEG", "CMYK", (64, 48), 4096),  # through Pillow
        ("PNG", "RGBA", (300, 200), 4096),  # transparency laid on white first
        ("WEBP", "RGB", (300, 200), 256),
    ],
)
def test_luma_decode_matches_the_colour_decode_made_grey(
    fmt: str, mode: str, size: tuple[int, int], max_side: int
) -> None:
    picture = _photo_like(size)
    if mode == "RGBA":
        picture.putalpha(Image.fromarray(np.full(size[::-1], 128, np.uint8)))
    data = encode(picture.convert(mode) if mode != "RGBA" else picture, fmt)
    colour = decode_image(data, max_side=max_side)
    luma = decode_image(data, max_side=max_side, gray=True)
    assert luma.ndim == 2 and luma.dtype == np.uint8 and luma.shape == colour.shape[:2]
    expected = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY).astype(int)
    # A JPEG's luma is its Y plane: the conversion's weights, rounded once rather than after the
    # colour planes are rebuilt and clipped to 0-255 (a few levels apart only where they clip).
    difference = np.abs(luma.astype(int) - expected)
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 2 and difference.max() <= 12


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    blue, green, red = decode_image(buffer.getvalue())[4, 4].tolist()
    assert red > 200 and blue < 60


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    blue, green, red = decode_image(buffer.getvalue())[4, 4].tolist()
    assert green > 200 and blue < 60


def test_large_jpeg_is_decoded_reduced_to_max_side() -> None:
    data = encode(Image.new("RGB", (6000, 4000), (90, 120, 150)), "JPEG")
    decoded = decode_image(data, max_side=1000)
    assert decoded.shape == (667, 1000, 3)
    assert abs(int(decoded[300, 500, 2]) - 90) <= 3


def test_24_megapixel_jpeg_is_dct_scaled_not_inflated() -> None:
    # 1/2 DCT scale keeps the long side at 3000 >= 2048, what the analyzers look at; a full-size
    # decode followed by a resize would have come out at the 4096 px max_side instead
    data = encode(Image.new("RGB", (6000, 4500), (200, 40, 10)), "JPEG")
    decoded = decode_image(data)
    assert decoded.shape == (2250, 3000, 3)
    assert abs(int(decoded[1000, 1500, 2]) - 200) <= 3


def test_12_megapixel_jpeg_keeps_its_full_size() -> None:
    data = encode(Image.new("RGB", (4000, 3000), (10, 40, 200)), "JPEG")
    assert decode_image(data).shape == (3000, 4000, 3)


def test_huge_flat_png_is_downscaled() -> None:
    decoded = decode_image(encode(Image.new("L", (9000, 3000), 200), "PNG"))
    assert decoded.shape == (1365, 4096, 3)
    assert (decoded == 200).all()


def test_too_many_pixels_are_refused_before_decoding() -> None:
    data = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(DecodeError, match="more than"):
        decode_image(data, max_pixels=10_000)
    with pytest.raises(DecodeError, match="more than"):
        probe_image(data, max_pixels=10_000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, not an image", "not a PNG"),
        (encode(Image.new("RGB", (8, 8)), "TIFF"), "TIFF"),
    ],
)
def test_unusable_bytes_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)
    with pytest.raises(DecodeError, match=reason):
        probe_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    truncated = data[: len(data) // 2]
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(truncated)
    with pytest.raises(DecodeError, match="truncated"):
        probe_image(truncated)


@pytest.mark.parametrize(
    ("fmt", "short", "content_type"),
    [
        ("PNG", "png", "image/png"),
        ("JPEG", "jpeg", "image/jpeg"),
        ("GIF", "gif", "image/gif"),
        ("BMP", "bmp", "image/bmp"),
        ("WEBP", "webp", "image/webp"),
    ],
)
def test_probe_reports_format_and_size(fmt: str, short: str, content_type: str) -> None:
    info = probe_image(encode(Image.new("RGB", (30, 20), (1, 2, 3)), fmt))
    assert (info.format, info.content_type, info.width, info.height) == (
        short,
        content_type,
        30,
        20,
    )


def _jpeg_without(data: bytes, marker: int) -> bytes:
    """The JPEG with every segment of one marker kind cut out (lengths kept consistent)."""
    position, kept = 2, [data[:2]]
    while True:
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position : position + 2 + length]
        if data[position + 1] != marker:
            kept.append(segment)
        position += 2 + length
        if data[position - 2 - length + 1] == 0xDA:
            return b"".join(kept) + data[position:]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: _jpeg_without(data, 0xDB), "quantisation tables"),
        (lambda data: data[:20] + b"junk" + data[20:], "no marker"),
        (lambda data: data[: len(data) - 2], "cut short"),
        (lambda data: data[:40], "corrupt"),
    ],
)
def test_probe_refuses_jpegs_whose_structure_is_broken_without_decoding(damage, reason: str) -> None:
    photo = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(photo), "JPEG")
    probe_image(data)  # the intact file passes
    with pytest.raises(DecodeError, match=reason):
        probe_image(damage(data))
