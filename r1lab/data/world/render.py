"""Drawing primitives of the generated world: numpy only, 32 x 32 RGB, values in [0, 1].

Every function takes a ``numpy.random.Generator`` (or explicit numbers) and nothing else that
varies, so an image is a pure function of the generator's state.

How a picture is made:

    img  = background(rng)                          # grey/tinted field, optional gradient
    m    = shape_mask("star", cx, cy, size, angle)  # coverage in [0, 1], 2x supersampled
    img  = paint(img, m, colour)                    # img <- (1 - m) img + m colour
    img  = finish(img, rng)                         # Gaussian noise, clip, round to 8 bits

Masks are drawn on a 2x supersampled grid and averaged down, so small shapes keep their
outline (a 7-pixel star still has five points). Coordinates are in pixels of the 32 x 32
image, x to the right, y downwards; angles are in degrees, counter-clockwise as seen.

Shapes have a *canonical pose* (triangle and star point up, crescent opens to the right,
heart has its point down) and the generators jitter it by at most +-25 degrees: a tiny ViT
trained from scratch cannot learn rotation-invariant shapes in a CPU budget
(docs/world.md, lesson 2).

Images are rounded to 8-bit levels at the end (``finish``), as if read from a PNG; this also
keeps the last-bit differences of ``sin``/``cos`` between machines from reaching the tensors
in all but the rarest pixels.
"""
from __future__ import annotations

import colorsys
from functools import lru_cache
from typing import Dict, Sequence, Tuple

import numpy as np

SIZE = 32          # image side in pixels
SS = 2             # supersampling factor of masks

# Named object colours (RGB in [0, 1]); the colours domain's classes, in this order.
COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.75, 0.20),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.55, 0.20, 0.85),
    "pink": (1.00, 0.50, 0.75),
    "brown": (0.55, 0.32, 0.12),
    "white": (0.95, 0.95, 0.95),
}
COLOUR_NAMES = tuple(COLOURS)

SHAPES = ("circle", "triangle", "square", "star", "cross", "ring", "heart", "crescent")

TEXTURES = ("horizontal", "vertical", "diagonal", "checkered", "dotted",
            "grid", "zigzag", "rings", "speckled", "wavy")


# --- grids ----------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _grid(ss: int = SS) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of the supersampled grid, in image pixels: (H*ss, W*ss) each."""
    c = ((np.arange(SIZE * ss) + 0.5) / ss).astype(np.float32)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return xx, yy


def downsample(mask: np.ndarray, ss: int = SS) -> np.ndarray:
    """Average ss x ss blocks: a supersampled 0/1 mask becomes a coverage in [0, 1]."""
    if ss == 1:
        return mask.astype(np.float32)
    m = mask.view(np.uint8) if mask.dtype == bool else mask
    total = sum(m[i::ss, j::ss].astype(np.float32) for i in range(ss) for j in range(ss))
    return total * np.float32(1.0 / (ss * ss))


def local_coords(cx: float, cy: float, scale: float, angle: float, ss: int = SS):
    """Coordinates (u, v) of every supersampled pixel in an object's frame: origin at
    (cx, cy), unit = ``scale`` pixels, v pointing *up*, rotated by ``angle`` degrees (CCW)."""
    xx, yy = _grid(ss)
    a = np.deg2rad(angle)
    c, s = np.float32(np.cos(a) / scale), np.float32(np.sin(a) / scale)
    dx, dy = xx - np.float32(cx), np.float32(cy) - yy  # dy: up is positive
    return c * dx + s * dy, c * dy - s * dx            # rotate the grid by -angle, then scale


# --- colours --------------------------------------------------------------------------------
def jitter_colour(rgb: Sequence[float], rng: np.random.Generator,
                  hue: float = 0.02, sat: Tuple[float, float] = (0.8, 1.0),
                  val: Tuple[float, float] = (0.8, 1.05)) -> np.ndarray:
    """A colour near ``rgb``: hue shifted by at most ``hue`` (of a full turn), saturation and
    value multiplied by factors drawn from ``sat`` and ``val``."""
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    h = (h + rng.uniform(-hue, hue)) % 1.0
    s = min(1.0, s * rng.uniform(*sat))
    v = min(1.0, v * rng.uniform(*val))
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def random_colour(rng: np.random.Generator, exclude: Sequence[str] = ()) -> Tuple[str, np.ndarray]:
    """One of the named colours (uniformly, minus ``exclude``), jittered: (name, rgb)."""
    names = [n for n in COLOUR_NAMES if n not in exclude]
    name = names[rng.integers(len(names))]
    return name, jitter_colour(COLOURS[name], rng)


# --- backgrounds and finishing --------------------------------------------------------------
def background(rng: np.random.Generator, lo: float = 0.0, hi: float = 0.45) -> np.ndarray:
    """A dark-to-mid grey field with a slight colour tint and a soft linear gradient."""
    grey = rng.uniform(lo, hi)
    tint = rng.normal(0.0, 0.04, size=3)
    gx, gy = rng.uniform(-0.08, 0.08, size=2)
    ramp = np.float32(gx) * _RAMP_X + np.float32(gy) * _RAMP_Y
    img = ramp[:, :, None] + (grey + tint).astype(np.float32)[None, None, :]
    return np.clip(img, 0.0, 1.0, out=img)


_RAMP_X = (_grid(1)[0] / SIZE - 0.5).astype(np.float32)   # -0.5 .. 0.5 left to right
_RAMP_Y = (_grid(1)[1] / SIZE - 0.5).astype(np.float32)   # -0.5 .. 0.5 top to bottom


def paint(img: np.ndarray, coverage: np.ndarray, colour: Sequence[float]) -> np.ndarray:
    """Alpha-composite a colour over ``img`` with per-pixel coverage in [0, 1]."""
    m = coverage[:, :, None]
    return img + m * (np.asarray(colour, dtype=np.float32)[None, None, :] - img)


def finish(img: np.ndarray, rng: np.random.Generator, noise: Tuple[float, float] = (0.0, 0.05)) -> np.ndarray:
    """Add Gaussian pixel noise (sigma drawn from ``noise``, one per image), clip to [0, 1]
    and round to 8 bits. ``img`` is one image (H, W, 3) or a batch (N, H, W, 3); returns
    float32 of the same shape."""
    batch = img.reshape((-1,) + img.shape[-3:]).astype(np.float32)
    sigma = rng.uniform(*noise, size=len(batch)).astype(np.float32)
    batch += rng.standard_normal(batch.shape, dtype=np.float32) * sigma[:, None, None, None]
    np.clip(batch, 0.0, 1.0, out=batch)
    batch = np.round(batch * np.float32(255.0)) * np.float32(1.0 / 255.0)
    return batch.reshape(img.shape)


# --- shapes ---------------------------------------------------------------------------------
def _star_radius(theta: np.ndarray, points: int = 5, inner: float = 0.42) -> np.ndarray:
    """Boundary radius of a regular star (outer radius 1, first point at theta = 0) along
    direction theta: fold theta into the half-sector [0, pi/points] and intersect the ray with
    the edge from the outer vertex (1, 0) to the inner vertex at angle pi/points."""
    half = np.pi / points
    phi = np.mod(theta, 2 * half)
    phi = np.where(phi > half, 2 * half - phi, phi)
    p1 = np.array([1.0, 0.0])
    p2 = inner * np.array([np.cos(half), np.sin(half)])
    n = np.array([p2[1] - p1[1], p1[0] - p2[0]])            # normal of the edge
    d = n @ p1
    return d / (n[0] * np.cos(phi) + n[1] * np.sin(phi))


def shape_mask(kind: str, cx: float, cy: float, size: float, angle: float = 0.0) -> np.ndarray:
    """Coverage (32 x 32, in [0, 1]) of a shape of half-extent ``size`` pixels centred at
    (cx, cy), rotated ``angle`` degrees from its canonical pose."""
    u, v = local_coords(cx, cy, size, angle)
    r2 = u * u + v * v
    if kind == "circle":
        m = r2 <= 1.0
    elif kind == "ring":
        m = (r2 <= 1.0) & (r2 >= 0.52 ** 2)
    elif kind == "square":
        m = np.maximum(np.abs(u), np.abs(v)) <= 0.82
    elif kind == "triangle":                  # equilateral, point up, circumradius 1.1
        vv = v + 0.15                         # move the centroid down to balance the area
        m = (vv >= -0.55)
        m &= (np.sqrt(3.0) * u + vv <= 1.1) & (-np.sqrt(3.0) * u + vv <= 1.1)
    elif kind == "star":                      # five points, one up
        theta = np.arctan2(u, v)              # 0 = straight up
        m = np.sqrt(r2) <= 1.1 * _star_radius(theta)
    elif kind == "cross":                     # plus sign
        m = ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    elif kind == "heart":                     # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, point down
        x, y = 1.2 * u, 1.2 * v + 0.15
        m = (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
    elif kind == "crescent":                  # disc minus a shifted disc: opens to the right
        m = (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v >= 0.78 ** 2)
    else:
        raise ValueError(f"unknown shape {kind!r}; choose from {SHAPES}")
    return downsample(m)


def disc_mask(cx: float, cy: float, radius: float) -> np.ndarray:
    """Coverage of a filled disc (the dots of the counting domain)."""
    xx, yy = _grid()
    return downsample((xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius)


def arrow_mask(cx: float, cy: float, length: float, width: float, head: float,
               angle: float) -> np.ndarray:
    """Coverage of an arrow centred at (cx, cy) pointing at ``angle`` degrees (0 = right,
    90 = up): a shaft of ``width`` pixels and a triangular head ``head`` pixels long and
    2 * 0.8 * head wide, ``length`` pixels from tail to tip."""
    a, b = local_coords(cx, cy, 1.0, angle)      # a along the arrow, b across (pixels)
    a = a + length / 2.0                          # tail at a = 0, tip at a = length
    shaft = (a >= 0.0) & (a <= length - head) & (np.abs(b) <= width / 2.0)
    tip = (a >= length - head) & (a <= length) & (np.abs(b) <= 0.8 * (length - a))
    return downsample(shaft | tip)


# --- textures -------------------------------------------------------------------------------
def texture_mask(kind: str, rng: np.random.Generator, period: float | None = None,
                 angle: float | None = None) -> np.ndarray:
    """A two-colour pattern over the whole frame: coverage of the second colour (32 x 32).

    Period (4.5-8 px), phase and a small rotation (+-8 degrees) are drawn from ``rng``
    unless given."""
    p = rng.uniform(4.5, 8.0) if period is None else period
    ang = rng.uniform(-8.0, 8.0) if angle is None else angle
    ox, oy = rng.uniform(0, SIZE, size=2)
    u, v = local_coords(ox, oy, 1.0, ang)        # pixel units, random origin = random phase
    two_pi = 2.0 * np.pi
    if kind == "horizontal":
        m = np.sin(two_pi * v / p) > 0
    elif kind == "vertical":
        m = np.sin(two_pi * u / p) > 0
    elif kind == "diagonal":
        m = np.sin(two_pi * (u + v) / (p * np.sqrt(2.0))) > 0
    elif kind == "checkered":
        m = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    elif kind == "dotted":                        # polka dots on a square lattice
        du = np.mod(u, p) - p / 2
        dv = np.mod(v, p) - p / 2
        m = du * du + dv * dv <= (0.3 * p) ** 2
    elif kind == "grid":                          # thin lines
        w = max(1.0, 0.2 * p)
        m = (np.mod(u, p) < w) | (np.mod(v, p) < w)
    elif kind == "zigzag":                        # horizontal stripes bent by a triangle wave
        q = 2.0 * p
        tri = 2.0 * np.abs(np.mod(u / q, 1.0) - 0.5)  # in [0, 1]
        m = np.sin(two_pi * (v + 0.5 * p * tri * 2.0) / p) > 0
    elif kind == "wavy":                          # horizontal stripes bent by a sine
        m = np.sin(two_pi * (v + 0.35 * p * np.sin(two_pi * u / (2.0 * p))) / p) > 0
    elif kind == "rings":                         # concentric circles about a point in frame
        cx, cy = rng.uniform(6, SIZE - 6, size=2)
        xx, yy = _grid()
        m = np.sin(two_pi * np.hypot(xx - cx, yy - cy) / p) > 0
    elif kind == "speckled":                      # sparse random specks of 1-2 px
        low = rng.random((SIZE // 2, SIZE // 2)) < 0.16
        fine = rng.random((SIZE, SIZE)) < 0.10
        m = np.kron(low, np.ones((2 * SS, 2 * SS), bool)) | np.kron(fine, np.ones((SS, SS), bool))
    else:
        raise ValueError(f"unknown texture {kind!r}; choose from {TEXTURES}")
    return downsample(m)


def texture_image(kind: str, rng: np.random.Generator, contrast: float = 1.0) -> Tuple[np.ndarray, str, str]:
    """A full-frame texture in two different named colours, the second blended at
    ``contrast`` (1 = full). Returns (image, first colour name, second colour name)."""
    n1, c1 = random_colour(rng)
    n2, c2 = random_colour(rng, exclude=(n1,))
    if contrast < 1.0:                            # a faint pattern over a grey field
        grey = background(rng)
        c1 = grey.mean(axis=(0, 1)) * (1 - contrast) + c1 * contrast
        c2 = grey.mean(axis=(0, 1)) * (1 - contrast) + c2 * contrast
    img = np.broadcast_to(np.asarray(c1)[None, None, :], (SIZE, SIZE, 3))
    return paint(img, texture_mask(kind, rng), c2), n1, n2


# --- digits ---------------------------------------------------------------------------------
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bilinear interpolation with half-pixel centres (the
    ``align_corners=False`` convention); X_out = M X_in M^T resizes an image."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


@lru_cache(maxsize=1)
def digits_24() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits (8 x 8, values 0-16) upsampled bilinearly to
    24 x 24 ink coverage in [0, 1]: (images (1797, 24, 24), labels (1797,))."""
    from sklearn.datasets import load_digits
    d = load_digits()
    m = _bilinear_matrix(8, 24)
    imgs = np.einsum("ij,njk,lk->nil", m, d.images / 16.0, m)
    return np.clip(imgs, 0.0, 1.0), d.target.astype(np.int64)


def digit_image(index: int, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    """Digit ``index`` of ``digits_24()``, inked in a random named colour at a random offset
    (0-8 px each way) on a random background: (image, colour name)."""
    ink = digits_24()[0][index]
    img = background(rng)
    name, colour = random_colour(rng)
    ox, oy = rng.integers(0, SIZE - 24 + 1, size=2)
    cov = np.zeros((SIZE, SIZE))
    cov[oy:oy + 24, ox:ox + 24] = ink
    return paint(img, cov, colour), name
