"""PNG decoding through libspng (`pyspng`) gives exactly PIL's pixels, or hands the file to PIL.

Every file is decoded twice, with pyspng and with the module's `pyspng` set to None (the fallback a Hub user without
it gets), and the arrays must be equal bit for bit; where `tests/image_kinds.py` states the expected pixels
independently, those too. Files that libspng must not read (transparency, animation, EXIF orientation, a bad
checksum, palette labels) must take the PIL path, and broken files must fail as PIL fails.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
from image_kinds import KINDS

from fapn_hf.modeling import image_decoding
from fapn_hf.modeling.image_decoding import decode_image, decode_image_bytes, png_pixels
from fapn_hf.tasks.semantic.data import LabelSpec, decode_sample

pyspng = pytest.importorskip("pyspng", reason="pyspng is a declared dependency (pyproject.toml)")


@pytest.fixture
def without_pyspng(monkeypatch):
    """Runs the body as a user without pyspng would (the kernel's fallback)."""

    def use(function, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(image_decoding, "pyspng", None)
            return function(*args, **kwargs)

    return use


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(samples: np.ndarray, colour: int, depth: int, extra: list[bytes] = (), after: list[bytes] = ()) -> bytes:
    """A PNG written here, independently of PIL: `samples` `(H, W)` or `(H, W, C)`, filter type 0 on every row."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + b"".join(extra)
        + _chunk(b"IDAT", zlib.compress(raw))
        + b"".join(after)
        + _chunk(b"IEND", b"")
    )


def _pil(data: bytes) -> np.ndarray:
    with PIL.Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


# (name, colour type, channels, bit depth): the kinds libspng reads.
PLAIN_KINDS = [
    ("gray8", 0, 1, 8),
    ("rgb8", 2, 3, 8),
    ("rgba8", 6, 4, 8),
    ("gray16", 0, 1, 16),
    ("rgb16", 2, 3, 16),
    ("rgba16", 6, 4, 16),
]
SIZES = [(1, 1), (1, 7), (7, 1), (13, 17), (64, 3)]  # tiny, one row or column, odd sizes


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("kind", PLAIN_KINDS, ids=lambda kind: kind[0])
def test_plain_pngs_are_read_by_libspng_as_pil_reads_them(kind, size, without_pyspng):
    name, colour, channels, depth = kind
    rng = np.random.default_rng(len(name) * 100 + size[0])
    shape = size if channels == 1 else (*size, channels)
    samples = rng.integers(0, 1 << depth, shape).astype(np.uint16 if depth == 16 else np.uint8)
    data = _png(samples, colour, depth)
    pixels = png_pixels(data)
    assert pixels is not None, "the fast path must take this kind"
    expected = _pil(data)
    assert pixels.dtype == expected.dtype and pixels.shape == expected.shape
    np.testing.assert_array_equal(pixels, expected)
    # PIL keeps 16-bit gray and the high byte of 16-bit colour: the samples written, independently of PIL.
    np.testing.assert_array_equal(pixels, samples if depth == 8 or colour == 0 else samples >> 8)
    fast = decode_image_bytes(data)
    assert fast.dtype == np.uint8 and fast.shape == (*size, 3)
    np.testing.assert_array_equal(fast, without_pyspng(decode_image_bytes, data))
    np.testing.assert_array_equal(fast, decode_image(PIL.Image.open(io.BytesIO(data))))


@pytest.mark.filterwarnings("ignore:.*is animated")
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_image_kind_decodes_identically_with_and_without_pyspng(kind, tmp_path, without_pyspng):
    path, expected = kind.make(tmp_path)
    fast = decode_image(path)
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_array_equal(fast, without_pyspng(decode_image, path))
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes(), str(path)), fast)


def test_the_fast_path_takes_plain_files_and_leaves_the_others_to_pil(tmp_path):
    """Which of the test kinds libspng reads: a kind silently always falling back would prove nothing above."""
    taken = {}
    for kind in KINDS:
        path, _ = kind.make(tmp_path)
        taken[kind.name] = png_pixels(path.read_bytes()) is not None
    assert taken == {
        "rgb": True,
        "exif_rotated": False,  # JPEG
        "exif_flipped": False,  # eXIf chunk: orientation
        "gray": True,
        "palette": False,
        "palette_transparent": False,
        "rgba": True,
        "gray_alpha": False,  # pyspng has no gray + alpha format
        "gray16": True,
        "int32": False,  # TIFF
        "float32": False,
        "animated": False,  # GIF
        "cmyk": False,
        "bilevel": False,  # 1-bit
    }


def _adam7(samples: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit RGB PNG: seven passes of sub-images, each row with filter type 0."""
    height, width = samples.shape[:2]
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    raw = b""
    for top, left, row_step, column_step in passes:
        sub = samples[top::row_step, left::column_step]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub.reshape(sub.shape[0], -1))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (23, 31)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_interlaced_png_is_identical(size):
    samples = np.random.default_rng(3).integers(0, 256, (*size, 3), dtype=np.uint8)
    data = _adam7(samples)
    np.testing.assert_array_equal(_pil(data), samples)  # the file is what it should be
    pixels = png_pixels(data)
    assert pixels is not None
    np.testing.assert_array_equal(pixels, samples)


@pytest.mark.filterwarnings("ignore:.*is animated")
def test_files_pil_reads_differently_are_left_to_pil(without_pyspng):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    exif = PIL.Image.Exif()
    exif[0x0112] = 3  # upside down
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
    cases = {
        "colour key (tRNS)": _png(rgb, 2, 8, [_chunk(b"tRNS", b"\0\0" + bytes([rgb[0, 0, 0], 0, 0, 0, 0]))]),
        "gray colour key": _png(gray, 0, 8, [_chunk(b"tRNS", struct.pack(">H", int(gray[0, 0])))]),
        "EXIF orientation": _png(rgb, 2, 8, [_chunk(b"eXIf", exif.tobytes())]),
        "EXIF after the data": _png(rgb, 2, 8, after=[_chunk(b"eXIf", exif.tobytes())]),
        "raw EXIF profile": _png(rgb, 2, 8, [_chunk(b"tEXt", b"Raw profile type exif\0" + b"\nexif\n0\n")]),
        "XMP orientation": _png(rgb, 2, 8, [_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp)]),
        "animation (acTL)": _png(rgb, 2, 8, [_chunk(b"acTL", struct.pack(">II", 1, 0))]),
    }
    for what, data in cases.items():
        assert png_pixels(data) is None, what
        np.testing.assert_array_equal(decode_image_bytes(data), without_pyspng(decode_image_bytes, data), what)
    # The orientation is applied: the fallback really changes the pixels.
    np.testing.assert_array_equal(decode_image_bytes(cases["EXIF orientation"]), rgb[::-1, ::-1])
    # A harmless text chunk keeps the fast path.
    commented = _png(rgb, 2, 8, [_chunk(b"tEXt", b"Comment\0hello")])
    np.testing.assert_array_equal(png_pixels(commented), rgb)


def test_decompression_bomb_limit_is_pil_s(monkeypatch):
    data = _png(np.zeros((20, 20), np.uint8), 0, 8)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises above twice this
    assert png_pixels(data) is None
    with pytest.raises(ValueError, match="is not an image that can be read"):
        decode_image_bytes(data, "bomb.png")


def test_broken_files_fail_as_they_do_with_pil(tmp_path, without_pyspng):
    good = _png(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8), 2, 8)
    bad_header = bytearray(good)
    bad_header[29] ^= 0xFF  # the IHDR checksum: PIL refuses the file ("broken PNG file")
    broken = {
        "bad header checksum": bytes(bad_header),
        "truncated": good[: len(good) - 30],
        "garbage after the signature": good[:8] + b"\0" * 40,
        "not an image": b"hello, world",
    }
    for what, data in broken.items():
        assert png_pixels(data) is None, what
        with pytest.raises(ValueError, match="broken.png is not an image that can be read"):
            decode_image_bytes(data, "broken.png")
        with pytest.raises(ValueError, match="broken.png is not an image that can be read"):
            without_pyspng(decode_image_bytes, data, "broken.png")
        path = tmp_path / "broken.png"
        path.write_bytes(data)
        with pytest.raises(ValueError, match="is not an image that can be read"):
            decode_image(path)
    with pytest.raises(TypeError, match="expected the bytes of an image file, got str"):
        decode_image_bytes("image.png")


@pytest.mark.parametrize("label_kind", ["gray8", "gray16", "palette", "gray_with_transparency"], ids=lambda kind: kind)
def test_label_maps_read_the_same_values_with_and_without_pyspng(label_kind, tmp_path, without_pyspng):
    """A data set's label PNG (8-bit, 16-bit, VOC's palette indices) gives the same class ids either way."""
    rng = np.random.default_rng(11)
    height, width = 13, 21
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    values = rng.choice(np.array([0, 1, 4, 7, 255]), (height, width)).astype(np.uint8)
    image_path, label_path = tmp_path / "image.png", tmp_path / "label.png"
    PIL.Image.fromarray(rgb).save(image_path)
    if label_kind == "gray16":
        label_path.write_bytes(_png(values.astype(np.uint16), 0, 16))
    elif label_kind == "palette":
        label = PIL.Image.fromarray(values, mode="L").convert("P")
        label.putpalette(rng.integers(0, 256, 768).tolist())
        label.save(label_path)
    elif label_kind == "gray_with_transparency":
        label_path.write_bytes(_png(values, 0, 8, [_chunk(b"tRNS", b"\0\0")]))
    else:
        PIL.Image.fromarray(values).save(label_path)
    with PIL.Image.open(label_path) as stored:
        assert np.array_equal(np.asarray(stored), values), "the file holds the values written"
    spec = LabelSpec(num_labels=8, mapping={0: 255, 1: 0, 4: 3, 7: 7, 255: 255})
    mapped = np.select([values == 1, values == 4, values == 7], [0, 3, 7], 255)
    for row in (
        {"image": {"path": str(image_path), "bytes": None}, "label": {"path": str(label_path), "bytes": None}},
        {"image": {"path": None, "bytes": image_path.read_bytes()}, "label": {"bytes": label_path.read_bytes()}},
    ):
        fast = decode_sample(row, 0, spec)
        slow = without_pyspng(decode_sample, row, 0, spec)
        for a, b in zip(fast, slow):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fast[0], rgb)
        np.testing.assert_array_equal(fast[1], mapped)


def test_decoded_arrays_are_writable_and_own_their_memory():
    data = _png(np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8), 2, 8)
    first, second = decode_image_bytes(data), decode_image_bytes(data)
    assert first.flags.writeable and first.flags.c_contiguous
    first[...] = 0
    assert second.any(), "two decodings share no memory"


def test_a_real_sized_cityscapes_png_is_identical(tmp_path, without_pyspng):
    """A photograph-like 256x512 RGB PNG and its label, written by PIL as the benchmark writes them."""
    from fapn_hf.benchmark.data_pipeline import synthetic_scene

    image, labels = synthetic_scene(256, 512, 0, (0, 7, 8, 11, 26))
    path = tmp_path / "scene.png"
    PIL.Image.fromarray(image).save(path)
    np.testing.assert_array_equal(decode_image(path), image)
    np.testing.assert_array_equal(without_pyspng(decode_image, path), image)
    label_bytes = io.BytesIO()
    PIL.Image.fromarray(labels.astype(np.uint8)).save(label_bytes, "PNG")
    np.testing.assert_array_equal(png_pixels(label_bytes.getvalue()), labels.astype(np.uint8))
