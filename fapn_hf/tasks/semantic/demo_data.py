"""A procedurally generated semantic segmentation data set for demos, quick training runs and tests.

Every image shows objects of five classes at very different scales on a textured background: large ellipses
("blob"), rotated rectangles ("box") and convex polygons ("shard") tens of pixels across, clusters of dots a few
pixels across ("dot") and 1-3 px wide curves ("wire"). Objects occlude each other, so there are many class
boundaries, and the thin and small classes are where a model without precise feature alignment loses IoU.

Colour alone does not separate the classes: each class has a characteristic hue range and texture, but the ranges
of neighbouring classes overlap, every image gets a random colour cast and sensor noise, and the background has
its own stripes, gradients, blotches and grey scratches whose colours overlap the objects'. Some images have a
rectangle or a border frame labelled 255 ("unlabelled", the usual ignore index), whose pixels may show anything.

Sample `index` of seed `seed` is rendered from `numpy.random.default_rng([seed, index])`, so it never depends on
how many samples are generated or in which order; splits drawn from disjoint index ranges are reproducible.
"""

from __future__ import annotations

import colorsys

import datasets
import numpy as np
from PIL import Image

DEMO_LABELS: tuple[str, ...] = ("background", "blob", "box", "wire", "dot", "shard")
IGNORE_INDEX = 255
BACKGROUND, BLOB, BOX, WIRE, DOT, SHARD = range(len(DEMO_LABELS))
# Validation indices start here, so the validation split stays the same whatever the size of the train split.
VALIDATION_START_INDEX = 1_000_000

# (hue centre, hue half-range) per class: ranges of neighbouring classes overlap on purpose.
_CLASS_HUES: dict[int, tuple[float, float]] = {
    BLOB: (0.00, 0.11),
    WIRE: (0.14, 0.11),
    SHARD: (0.38, 0.12),
    BOX: (0.62, 0.12),
    DOT: (0.84, 0.11),
}
_DEMO_FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})


def demo_id2label() -> dict[int, str]:
    """`{class id: class name}` of the demo data set (the ignore index 255 is not a class)."""
    return dict(enumerate(DEMO_LABELS))


class _Canvas:
    """A float RGB image in [0, 1] and its label map, with alpha-blended painting of signed-distance shapes."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.ys = np.arange(height, dtype=np.float32)[:, None]
        self.xs = np.arange(width, dtype=np.float32)[None, :]

    def window(self, cy: float, cx: float, radius: float) -> tuple[slice, slice] | None:
        """The pixel window of a shape within `radius` of `(cy, cx)`, clipped to the image, or None if outside."""
        y0, y1 = max(int(cy - radius) - 2, 0), min(int(cy + radius) + 3, self.height)
        x0, x1 = max(int(cx - radius) - 2, 0), min(int(cx + radius) + 3, self.width)
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def paint(self, window: tuple[slice, slice], sd: np.ndarray, colour: np.ndarray, label: int | None = None) -> None:
        """Blends `colour` ((3,) or (h, w, 3)) where the signed distance `sd` ((h, w), negative inside) is small.

        The image is anti-aliased over one pixel; the label is crisp: exactly the pixels with `sd <= 0`, i.e. alpha
        of at least one half, get `label` (None leaves the labels alone, for unlabelled background clutter).
        """
        alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]
        patch = self.image[window]
        patch += alpha * (colour - patch)
        if label is not None:
            self.label[window][sd <= 0] = label


def _random_colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    centre, spread = _CLASS_HUES[cls]
    hue = (centre + rng.uniform(-spread, spread)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.95), rng.uniform(0.45, 1.0)), np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled `cells x cells` uniform noise in [-1, 1], shape `(height, width)`: blotches."""
    coarse = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.linspace(0.0, cells, n, dtype=np.float32)
        lower = np.minimum(pos.astype(np.int64), cells - 1)
        return lower, pos - lower

    iy, fy = axis(height)
    ix, fx = axis(width)
    fy, fx = fy[:, None], fx[None, :]
    top = coarse[iy][:, ix] * (1 - fx) + coarse[iy][:, ix + 1] * fx
    bottom = coarse[iy + 1][:, ix] * (1 - fx) + coarse[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _stripes(canvas: _Canvas, rng: np.random.Generator, period: float) -> np.ndarray:
    """A full-image sine grating of random orientation and phase, shape `(H, W)`, values in [-1, 1]."""
    theta = rng.uniform(0.0, np.pi)
    phase = rng.uniform(0.0, 2 * np.pi)
    return np.sin((canvas.xs * np.cos(theta) + canvas.ys * np.sin(theta)) * (2 * np.pi / period) + phase)


def _draw_background(canvas: _Canvas, rng: np.random.Generator) -> None:
    h, w = canvas.height, canvas.width
    hue = rng.uniform()
    # Mostly desaturated, but up to 0.45 saturation: overlaps the least saturated objects.
    c0 = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.0, 0.45), rng.uniform(0.25, 0.8)), np.float32)
    c1 = np.array(
        colorsys.hsv_to_rgb((hue + rng.uniform(-0.2, 0.2)) % 1.0, rng.uniform(0.0, 0.45), rng.uniform(0.25, 0.8)),
        np.float32,
    )
    theta = rng.uniform(0.0, 2 * np.pi)
    ramp = canvas.xs * np.cos(theta) / w + canvas.ys * np.sin(theta) / h
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    canvas.image[:] = c0 + ramp[..., None] * (c1 - c0)
    shade = 1.0 + rng.uniform(0.05, 0.3) * _smooth_noise(rng, h, w, int(rng.integers(2, 7)))
    if rng.uniform() < 0.7:
        shade += rng.uniform(0.04, 0.2) * _stripes(canvas, rng, rng.uniform(3.0, 16.0))
    canvas.image *= shade[..., None]
    # Grey scratches look like wires but are background: shape alone does not make a wire.
    for _ in range(int(rng.integers(0, 3))):
        grey = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.1, 0.95)))
        _draw_curve(canvas, rng, grey.astype(np.float32), None)


def _rotated(canvas: _Canvas, window: tuple[slice, slice], cy: float, cx: float, theta: float):
    dy, dx = canvas.ys[window[0]] - cy, canvas.xs[:, window[1]] - cx
    c, s = np.cos(theta), np.sin(theta)
    return dx * c + dy * s, dy * c - dx * s


def _random_centre(canvas: _Canvas, rng: np.random.Generator) -> tuple[float, float]:
    # Up to 10% outside the image: objects get cut by the border too.
    return (
        rng.uniform(-0.1, 1.1) * canvas.height,
        rng.uniform(-0.1, 1.1) * canvas.width,
    )


def _draw_blob(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    cy, cx = _random_centre(canvas, rng)
    a = rng.uniform(10.0, 28.0) * scale
    b = a * rng.uniform(0.5, 1.0)
    theta = rng.uniform(0.0, np.pi)
    colour = _random_colour(rng, BLOB)
    window = canvas.window(cy, cx, a)
    if window is None:
        return
    u, v = _rotated(canvas, window, cy, cx, theta)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    # First-order signed distance of the ellipse: (r - 1) / |grad r|, exact on the boundary.
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(r, 1e-6)
    sd = (r - 1.0) / np.maximum(grad, 1e-6)
    shading = 1.15 - 0.45 * np.minimum(r, 1.0) ** 2
    canvas.paint(window, sd, colour * shading[..., None], BLOB)


def _draw_box(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    cy, cx = _random_centre(canvas, rng)
    a, b = rng.uniform(7.0, 24.0, 2) * scale
    theta = rng.uniform(0.0, np.pi)
    colour = _random_colour(rng, BOX)
    period, amplitude = rng.uniform(3.0, 8.0), rng.uniform(0.08, 0.25)
    window = canvas.window(cy, cx, float(np.hypot(a, b)))
    if window is None:
        return
    u, v = _rotated(canvas, window, cy, cx, theta)
    sd = np.maximum(np.abs(u) - a, np.abs(v) - b)
    stripes = 1.0 + amplitude * np.sign(np.sin(u * (2 * np.pi / period)))
    canvas.paint(window, sd, colour * stripes[..., None], BOX)


def _draw_shard(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    cy, cx = _random_centre(canvas, rng)
    n = int(rng.integers(3, 6))
    # Sorted angles with a minimum gap between them keep the polygon from degenerating into a sliver.
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, n))
    angles = angles[0] + np.arange(n) * (2 * np.pi / n) * 0.5 + (angles - angles[0]) * 0.5
    radii = rng.uniform(8.0, 22.0, n) * scale
    vy, vx = cy + radii * np.sin(angles), cx + radii * np.cos(angles)
    colour = _random_colour(rng, SHARD)
    gradient_angle, gradient_amplitude = rng.uniform(0.0, 2 * np.pi), rng.uniform(0.15, 0.4)
    window = canvas.window(cy, cx, float(radii.max()))
    if window is None:
        return
    ys, xs = canvas.ys[window[0]], canvas.xs[:, window[1]]
    # Intersection of the edges' half-planes, each oriented to hold the centre: a convex shard even where the
    # star-shaped vertex polygon is not convex.
    sd = np.full((ys.shape[0], xs.shape[1]), -np.inf, np.float32)
    for i in range(n):
        ey, ex = vy[(i + 1) % n] - vy[i], vx[(i + 1) % n] - vx[i]
        length = max(float(np.hypot(ey, ex)), 1e-6)
        ny, nx = -ex / length, ey / length
        if ny * (cy - vy[i]) + nx * (cx - vx[i]) > 0:
            ny, nx = -ny, -nx
        np.maximum(sd, ny * (ys - vy[i]) + nx * (xs - vx[i]), out=sd)
    along = (xs - cx) * np.cos(gradient_angle) + (ys - cy) * np.sin(gradient_angle)
    shading = 1.0 + gradient_amplitude * np.clip(along / radii.max(), -1.0, 1.0)
    canvas.paint(window, sd, colour * shading[..., None], SHARD)


def _draw_curve(canvas: _Canvas, rng: np.random.Generator, colour: np.ndarray, label: int | None) -> None:
    """A straight or quadratic-Bezier curve 1-3 px wide, rasterised as the distance to a polyline."""
    h, w = canvas.height, canvas.width
    p0 = rng.uniform(-0.1, 1.1, 2) * (h, w)
    length = rng.uniform(0.3, 1.0) * max(h, w)
    direction = rng.uniform(0.0, 2 * np.pi)
    p2 = p0 + length * np.array([np.sin(direction), np.cos(direction)])
    bend = rng.uniform(-0.5, 0.5) * length if rng.uniform() < 0.7 else 0.0
    p1 = (p0 + p2) / 2 + bend * np.array([np.cos(direction), -np.sin(direction)])
    half_width = rng.uniform(0.5, 1.5)
    segments = 12 if bend else 1
    t = np.linspace(0.0, 1.0, segments + 1)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    lo, hi = points.min(0) - half_width - 2, points.max(0) + half_width + 2
    y0, y1 = max(int(lo[0]), 0), min(int(hi[0]) + 2, h)
    x0, x1 = max(int(lo[1]), 0), min(int(hi[1]) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    dist = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
    # Each segment only touches the pixels of its own bounding box: a long curve stays cheap.
    for a, b in zip(points[:-1], points[1:]):
        sy0, sy1 = max(int(min(a[0], b[0]) - half_width) - 1, y0), min(int(max(a[0], b[0]) + half_width) + 3, y1)
        sx0, sx1 = max(int(min(a[1], b[1]) - half_width) - 1, x0), min(int(max(a[1], b[1]) + half_width) + 3, x1)
        if sy0 >= sy1 or sx0 >= sx1:
            continue
        py, px = canvas.ys[sy0:sy1] - a[0], canvas.xs[:, sx0:sx1] - a[1]
        ey, ex = b[0] - a[0], b[1] - a[1]
        s = np.clip((py * ey + px * ex) / max(ey * ey + ex * ex, 1e-9), 0.0, 1.0)
        d = np.hypot(py - s * ey, px - s * ex)
        region = dist[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        np.minimum(region, d, out=region)
    canvas.paint((slice(y0, y1), slice(x0, x1)), dist - half_width, colour, label)


def _draw_dot_cluster(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    cy, cx = rng.uniform(0.05, 0.95) * canvas.height, rng.uniform(0.05, 0.95) * canvas.width
    spread = rng.uniform(4.0, 16.0) * scale
    colour = _random_colour(rng, DOT)
    for _ in range(int(rng.integers(2, 8))):
        # Radius >= 0.75 px: every disc covers at least one pixel centre, so no dot vanishes from the label.
        radius = rng.uniform(0.8, 2.5)
        dy, dx = rng.normal(0.0, spread, 2)
        window = canvas.window(cy + dy, cx + dx, radius)
        if window is None:
            continue
        d = np.hypot(canvas.ys[window[0]] - cy - dy, canvas.xs[:, window[1]] - cx - dx)
        canvas.paint(window, d - radius, colour * rng.uniform(0.85, 1.15), DOT)


def _draw_ignore_region(canvas: _Canvas, rng: np.random.Generator) -> None:
    h, w = canvas.height, canvas.width
    if rng.uniform() < 0.5:
        rh, rw = int(rng.uniform(0.12, 0.35) * h), int(rng.uniform(0.12, 0.35) * w)
        y0, x0 = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        canvas.label[y0 : y0 + rh, x0 : x0 + rw] = IGNORE_INDEX
        # Unlabelled pixels may show anything: here sometimes a patch of noise, sometimes the scene itself.
        if rng.uniform() < 0.5:
            canvas.image[y0 : y0 + rh, x0 : x0 + rw] = rng.uniform(0.0, 1.0, (rh, rw, 3))
    if rng.uniform() < 0.15:
        border = int(rng.integers(2, 7))
        canvas.label[:border] = canvas.label[-border:] = IGNORE_INDEX
        canvas.label[:, :border] = canvas.label[:, -border:] = IGNORE_INDEX


def render_sample(
    index: int, seed: int = 0, size: tuple[int, int] = (128, 128), ignore_region: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Renders sample `index` of the demo data set of `seed`.

    Args:
        index: non-negative sample index; the sample depends only on `(seed, index)` (and `size`).
        seed: non-negative data set seed.
        size: `(height, width)` of the sample, at least 16 each; object sizes scale with the smaller side.
        ignore_region: whether some samples get a rectangle or border frame labelled 255. With False the label
            map is the same outside those regions and never contains 255.

    Returns:
        `(image, label)`: `image` uint8 `(height, width, 3)` RGB and `label` uint8 `(height, width)` with class ids
        in `[0, len(DEMO_LABELS))` or 255 (ignore).
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    height, width = int(size[0]), int(size[1])
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least (16, 16), got {tuple(size)}")
    rng = np.random.default_rng([seed, index])
    canvas = _Canvas(height, width)
    scale = min(height, width) / 128.0
    _draw_background(canvas, rng)

    large = [_draw_blob] * int(rng.integers(1, 4)) + [_draw_box] * int(rng.integers(1, 4))
    large += [_draw_shard] * int(rng.integers(1, 5))
    order = [large[i] for i in rng.permutation(len(large))]
    # Usually the thin and small objects lie on top; sometimes a large shape occludes them.
    late = order.pop() if rng.uniform() < 0.3 else None
    for draw in order:
        draw(canvas, rng, scale)
    for _ in range(int(rng.integers(1, 5))):
        _draw_curve(canvas, rng, _random_colour(rng, WIRE), WIRE)
    for _ in range(int(rng.integers(1, 5))):
        _draw_dot_cluster(canvas, rng, scale)
    if late is not None:
        late(canvas, rng, scale)

    canvas.image *= rng.uniform(0.8, 1.2, 3).astype(np.float32)  # colour cast of the whole "camera"
    canvas.image += rng.normal(0.0, rng.uniform(0.02, 0.07), canvas.image.shape).astype(np.float32)
    if ignore_region:
        _draw_ignore_region(canvas, rng)
    image = (np.clip(canvas.image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image, canvas.label


def make_demo_dataset(
    num_samples: int = 64,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    ignore_region: bool = True,
    start_index: int = 0,
) -> datasets.Dataset:
    """Renders samples `start_index .. start_index + num_samples - 1` into an in-memory `datasets.Dataset`.

    Returns:
        A data set with the columns `"image"` (`datasets.Image`, RGB, `size` = `(height, width)`) and `"label"`
        (`datasets.Image`, a mode-"L" PNG of the label map: class ids and 255 for ignore).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    images, labels = [], []
    for index in range(start_index, start_index + num_samples):
        image, label = render_sample(index, seed=seed, size=size, ignore_region=ignore_region)
        images.append(Image.fromarray(image))
        labels.append(Image.fromarray(label))
    info = datasets.DatasetInfo(
        description=f"FaPN demo segmentation data (seed {seed}, indices [{start_index}, {start_index + num_samples}))",
        features=_DEMO_FEATURES,
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=_DEMO_FEATURES, info=info)


def make_demo_splits(
    num_train: int = 192,
    num_validation: int = 48,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    ignore_region: bool = True,
) -> datasets.DatasetDict:
    """`"train"` (indices `0 .. num_train - 1`) and `"validation"` (from `VALIDATION_START_INDEX` on) splits.

    The validation split does not depend on `num_train`. Both hold `(height, width) = size` images; see
    `make_demo_dataset` for the columns.
    """
    if num_train > VALIDATION_START_INDEX:
        raise ValueError(f"num_train must be at most {VALIDATION_START_INDEX}, got {num_train}")
    return datasets.DatasetDict(
        train=make_demo_dataset(num_train, seed=seed, size=size, ignore_region=ignore_region),
        validation=make_demo_dataset(
            num_validation, seed=seed, size=size, ignore_region=ignore_region, start_index=VALIDATION_START_INDEX
        ),
    )
