"""Image files as people have them, each with the RGB pixels FaPN must see, computed here independently
of `fapn_hf.decode_image`: from the stored pixels and the documented rule
(EXIF orientation, bit depth scaled by the type's range, transparency over white, first frame of an animation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

WHITE = 255.0
HEIGHT, WIDTH = 20, 28  # stored size; EXIF-rotated kinds display as WIDTH x HEIGHT


@dataclass
class ImageKind:
    name: str
    write: Callable[[Path, np.random.Generator], np.ndarray]  # writes the file, returns the expected RGB uint8
    suffix: str
    lossless_in_transformers: bool  # transformers' load_image (pipeline) keeps these pixels

    def make(self, folder: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
        path = folder / f"{self.name}{self.suffix}"
        expected = self.write(path, np.random.default_rng(seed))
        return path, expected


def _rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray, alpha_max: float = 255.0) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / alpha_max
    return np.rint(rgb.astype(np.float64) * a + WHITE * (1 - a)).astype(np.uint8)


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def write_rgb_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    rgb = _rgb(rng)
    Image.fromarray(rgb).save(path)
    return rgb


def write_exif_rotated_jpeg(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A phone photo: stored landscape, EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    image = Image.fromarray(_rgb(rng))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, quality=95, exif=exif)
    with Image.open(path) as stored:  # the JPEG's decoded pixels, as stored
        pixels = np.asarray(stored.convert("RGB"))
    return np.ascontiguousarray(np.rot90(pixels, k=-1))


def write_exif_flipped_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    """EXIF orientation 3: displayed upside down from the stored pixels."""
    rgb = _rgb(rng)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 3
    image.save(path, exif=exif)
    return np.ascontiguousarray(rgb[::-1, ::-1])


def write_gray_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    gray = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    Image.fromarray(gray).save(path)
    return _gray3(gray)


def write_palette_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    colours = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    indices = rng.integers(0, 4, (HEIGHT, WIDTH), dtype=np.uint8)
    image = Image.frombytes("P", (WIDTH, HEIGHT), indices.tobytes())
    image.putpalette(colours.flatten().tolist())
    image.save(path)
    return colours[indices]


def write_palette_transparent_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    """Palette entry 0 is transparent: those pixels are white, never the colour stored in the palette."""
    colours = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    indices = rng.integers(0, 4, (HEIGHT, WIDTH), dtype=np.uint8)
    image = Image.frombytes("P", (WIDTH, HEIGHT), indices.tobytes())
    image.putpalette(colours.flatten().tolist())
    image.save(path, transparency=0)
    expected = colours[indices]
    expected[indices == 0] = 255
    return expected


def write_rgba_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    rgb = _rgb(rng)
    alpha = rng.choice(np.array([0, 64, 255], np.uint8), (HEIGHT, WIDTH))
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    return _over_white(rgb, alpha)


def write_gray_alpha_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    gray = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    alpha = rng.choice(np.array([0, 128, 255], np.uint8), (HEIGHT, WIDTH))
    Image.fromarray(np.dstack([gray, alpha])).save(path)  # (H, W, 2) uint8: mode LA
    return _over_white(_gray3(gray), alpha)


def write_gray16_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A 16-bit grayscale PNG using the whole range (PIL reads it as mode I;16)."""
    values = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    Image.fromarray(values).save(path)
    return _gray3(np.rint(values / 257.0).astype(np.uint8))


def write_int32_tiff(path: Path, rng: np.random.Generator) -> np.ndarray:
    """16-bit data in a 32-bit integer image (PIL mode I), as many 16-bit files are read."""
    values = rng.integers(0, 65536, (HEIGHT, WIDTH)).astype(np.int32)
    Image.fromarray(values).save(path)
    return _gray3(np.rint(values / 257.0).astype(np.uint8))


def write_float_tiff(path: Path, rng: np.random.Generator) -> np.ndarray:
    values = rng.random((HEIGHT, WIDTH), dtype=np.float32)
    Image.fromarray(values).save(path)
    return _gray3(np.rint(values.astype(np.float64) * 255).astype(np.uint8))


def write_animated_gif(path: Path, rng: np.random.Generator) -> np.ndarray:
    """Two frames of flat grays (exact in a GIF palette): the first one counts."""
    frames = [Image.fromarray(np.full((HEIGHT, WIDTH, 3), value, np.uint8)) for value in (40, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return np.full((HEIGHT, WIDTH, 3), 40, np.uint8)


def write_cmyk_jpeg(path: Path, rng: np.random.Generator) -> np.ndarray:
    Image.fromarray(_rgb(rng)).convert("CMYK").save(path, quality=95)
    with Image.open(path) as stored:  # CMYK has no single RGB meaning: PIL's conversion is the documented rule
        return np.asarray(stored.convert("RGB"))


def write_bilevel_png(path: Path, rng: np.random.Generator) -> np.ndarray:
    bits = rng.integers(0, 2, (HEIGHT, WIDTH)).astype(bool)
    Image.fromarray(bits).save(path)
    return _gray3(np.where(bits, 255, 0).astype(np.uint8))


KINDS = [
    ImageKind("rgb", write_rgb_png, ".png", True),
    ImageKind("exif_rotated", write_exif_rotated_jpeg, ".jpg", True),
    ImageKind("exif_flipped", write_exif_flipped_png, ".png", True),
    ImageKind("gray", write_gray_png, ".png", True),
    ImageKind("palette", write_palette_png, ".png", True),
    ImageKind("palette_transparent", write_palette_transparent_png, ".png", False),
    ImageKind("rgba", write_rgba_png, ".png", False),
    ImageKind("gray_alpha", write_gray_alpha_png, ".png", False),
    ImageKind("gray16", write_gray16_png, ".png", False),
    ImageKind("int32", write_int32_tiff, ".tif", False),
    ImageKind("float32", write_float_tiff, ".tif", False),
    ImageKind("animated", write_animated_gif, ".gif", True),
    ImageKind("cmyk", write_cmyk_jpeg, ".jpg", True),
    ImageKind("bilevel", write_bilevel_png, ".png", True),
]
