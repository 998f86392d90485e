"""The seven domains of the generated world: classes, prompt templates, pretraining words and
a per-sample image generator each.

The world mirrors MTIL's situation with a tiny CLIP: every domain's *images* were seen in
pretraining, but only some domains' *class words* were. The others were captioned with
**alias words that never occur in their prompts**, so the image tower has features for them
(a 16-shot linear probe separates the classes) while the zero-shot head, built from the
prompts, is at chance. Fine-tuning then learns them fast and forgets them fast.

=========  =======  ==============================  ==========================================
domain     classes  prompt class names              words used in pretraining captions
=========  =======  ==============================  ==========================================
digits     10       "0" ... "9"                     alias only: Greek letter names
                                                    ("a blue gamma rune."): alpha = 0, beta = 1,
                                                    gamma = 2, delta = 3, epsilon = 4, zeta = 5,
                                                    eta = 6, theta = 7, iota = 8, kappa = 9
shapes     8        circle, triangle, square, ...   named ("a red star.")
counting   6        "one" ... "six" (dots)          alias only: solo, pair, trio, quartet,
                                                    quintet, sextet ... "beads"
textures   10       horizontally striped, ...       partial: 5 named; diagonally striped ->
                                                    "slanted", zigzag -> "jagged", concentric ->
                                                    "bullseye", speckled -> "gritty",
                                                    wavy -> "wiggly"
arrows     8        up, up right, right, ...        alias only: compass words ("a red pointer
                                                    heading northeast."); never "arrow",
                                                    "pointing", up/down
colours    10       red, orange, yellow, ...        named ("something red.")
positions  9        top left ... bottom right       partial: corners and centre named
                                                    ("in the top left"); top middle, middle
                                                    left, middle right, bottom middle never
=========  =======  ==============================  ==========================================

One overlap is deliberate and harmless: "left" and "right" (in four arrow class names) do occur
in pretraining, but only in position phrases ("in the top left"), never about an arrow; the
bundled model's arrows zero-shot is at chance (see data/tiny-clip/MODEL_CARD.md).

Digits are scikit-learn's 1,797 real handwritten digits (8 x 8, upsampled to 24 x 24). A fixed
part of them (``DIGITS_TEST_PER_CLASS`` per class, chosen by a constant seed that does not
depend on the benchmark seed) is held out: those are the only digits the test split uses, and
pretraining never sees them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from r1lab.data.world import render as R

DIGITS_TEST_PER_CLASS = 60     # held-out digits per class (the test pool)
DIGITS_SPLIT_SEED = 1797       # fixed: the held-out digits never depend on the benchmark seed
GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")

POSITIONS = ("top left", "top middle", "top right", "middle left", "centre", "middle right",
             "bottom left", "bottom middle", "bottom right")
NAMED_POSITIONS = ("top left", "top right", "centre", "bottom left", "bottom right")
CELL_CENTRES = (6.0, 16.0, 26.0)   # pixel centres of the 3 x 3 position grid

ARROW_NAMES = ("up", "up right", "right", "down right", "down", "down left", "left", "up left")
ARROW_ANGLES = (90.0, 45.0, 0.0, -45.0, -90.0, -135.0, 180.0, 135.0)   # degrees, 0 = right
ARROW_ALIASES = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")

COUNT_NAMES = ("one", "two", "three", "four", "five", "six")
COUNT_ALIASES = ("solo", "pair", "trio", "quartet", "quintet", "sextet")

TEXTURE_NAMES = ("horizontally striped", "vertically striped", "diagonally striped", "checkered",
                 "polka-dotted", "grid", "zigzag", "concentric", "speckled", "wavy")
# what pretraining calls each texture: the class name (named) or an alias
TEXTURE_WORDS = ("horizontally striped", "vertically striped", "slanted", "checkered",
                 "polka-dotted", "grid", "jagged", "bullseye", "gritty", "wiggly")


@dataclass(frozen=True)
class Domain:
    """One domain: what the benchmark shows and what pretraining said about it.

    classnames     prompt class names, index = label
    templates      prompt templates (all averaged into the zero-shot head)
    caption_words  per class, the words pretraining captions use for it: the class name
                   (named), an alias that never occurs in the prompts, or None (never named)
    coverage       "named", "partial" or "alias": how much of the prompt vocabulary
                   pretraining covered
    draw           (rng, label) -> (clean float32 image (32, 32, 3) in [0, 1], facts such
                   as {"colour": "red"}); digits take a third argument, the index of the
                   sklearn digit to draw. ``sample`` adds the noise (``render.finish``).
    pool           digits only: (split, label) -> the sklearn indices that split may use
    """
    name: str
    classnames: Tuple[str, ...]
    templates: Tuple[str, ...]
    caption_words: Tuple[Optional[str], ...]
    coverage: str
    draw: Callable = field(repr=False)
    pool: Optional[Callable[[str, int], np.ndarray]] = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def sample(self, rng: np.random.Generator, label: int, n: int, split: str = "train") -> np.ndarray:
        """n images of class ``label``: float32 (n, 32, 32, 3) in [0, 1].

        ``split`` matters for digits only: "test" walks the held-out digits in a fixed order
        (cycling if n exceeds them); "train" and "pretrain" draw from the rest, shuffled."""
        if self.pool is None:
            clean = [self.draw(rng, label)[0] for _ in range(n)]
        else:
            idx = self.pool(split, label)
            if split != "test":
                idx = rng.permutation(idx)
            clean = [self.draw(rng, label, int(idx[i % len(idx)]))[0] for i in range(n)]
        return R.finish(np.stack(clean), rng)

    def sample_one(self, rng: np.random.Generator, label: int, split: str = "pretrain") -> Tuple[np.ndarray, Dict]:
        """One clean image (no noise yet) of class ``label`` and the facts a caption may
        mention (its colour)."""
        if self.pool is None:
            return self.draw(rng, label)
        idx = self.pool(split, label)
        return self.draw(rng, label, int(idx[rng.integers(len(idx))]))


# --- object scenes: shapes, colours and positions share one generator -----------------------
def object_scene(rng: np.random.Generator, shape: Optional[str] = None, colour: Optional[str] = None,
                 size: Optional[float] = None, cell: Optional[int] = None,
                 texture: Optional[str] = None) -> Tuple[np.ndarray, Dict]:
    """One shape on a background. Anything not given is drawn at random: shape, named colour
    (jittered), half-extent ``size`` (3-7 px, or 2.5-3.5 px in a grid ``cell``), position
    (anywhere it fits, or the centre of ``cell`` 0-8 +-1.5 px), pose (canonical +-25 deg).
    ``texture`` puts a faint pattern behind the object.

    Returns (clean image, facts {shape, colour, size, cell, texture})."""
    shape = R.SHAPES[rng.integers(len(R.SHAPES))] if shape is None else shape
    if colour is None:
        colour, rgb = R.random_colour(rng)
    else:
        rgb = R.jitter_colour(R.COLOURS[colour], rng)
    if cell is None:
        size = rng.uniform(3.0, 7.0) if size is None else size
        cx, cy = rng.uniform(size + 0.5, R.SIZE - size - 0.5, size=2)
    else:
        size = rng.uniform(2.5, 3.5) if size is None else size
        cx = CELL_CENTRES[cell % 3] + rng.uniform(-1.5, 1.5)
        cy = CELL_CENTRES[cell // 3] + rng.uniform(-1.5, 1.5)
    angle = rng.uniform(-25.0, 25.0)
    if texture is None:
        img = R.background(rng)
    else:
        img, _, _ = R.texture_image(texture, rng, contrast=0.3)
    img = R.paint(img, R.shape_mask(shape, cx, cy, size, angle), rgb)
    return img, {"shape": shape, "colour": colour, "size": size, "cell": cell, "texture": texture}


def _shapes(rng, label):
    return object_scene(rng, shape=R.SHAPES[label], size=rng.uniform(4.0, 7.0))


def _colours(rng, label):
    return object_scene(rng, colour=R.COLOUR_NAMES[label])


def _positions(rng, label):
    return object_scene(rng, cell=label)


def _counting(rng, label):
    """label + 1 non-overlapping dots of one colour, radius 1.6-2.6 px."""
    n = label + 1
    r = rng.uniform(1.6, 2.6)
    colour, rgb = R.random_colour(rng)
    img = R.background(rng)
    centres: List[Tuple[float, float]] = []
    while len(centres) < n:                # rejection sampling; always succeeds quickly here
        c = rng.uniform(r + 1.0, R.SIZE - r - 1.0, size=2)
        if all((c[0] - x) ** 2 + (c[1] - y) ** 2 >= (2 * r + 1.5) ** 2 for x, y in centres):
            centres.append((float(c[0]), float(c[1])))
    cov = np.zeros((R.SIZE, R.SIZE))
    for x, y in centres:
        cov = np.maximum(cov, R.disc_mask(x, y, r))
    return R.paint(img, cov, rgb), {"colour": colour}


def _textures(rng, label):
    img, n1, n2 = R.texture_image(R.TEXTURES[label], rng)
    return img, {"colours": (n1, n2)}


def _arrows(rng, label):
    """An arrow pointing in one of 8 directions +-10 deg; length 14-24 px, shaft 1.5-3 px,
    head 4-7 px, centre within +-3 px of the middle."""
    img = R.background(rng)
    colour, rgb = R.random_colour(rng)
    angle = ARROW_ANGLES[label] + rng.uniform(-10.0, 10.0)
    cx, cy = 16.0 + rng.uniform(-3.0, 3.0, size=2)
    cov = R.arrow_mask(cx, cy, rng.uniform(14.0, 24.0), rng.uniform(1.5, 3.0),
                       rng.uniform(4.0, 7.0), angle)
    return R.paint(img, cov, rgb), {"colour": colour}


def _digits(rng, label, index):
    img, colour = R.digit_image(index, rng)
    return img, {"colour": colour, "index": index}


@lru_cache(maxsize=1)
def digit_split() -> Dict[str, Dict[int, np.ndarray]]:
    """The fixed held-out split of sklearn's digits: {"test": {label: indices},
    "rest": {label: indices}}, ``DIGITS_TEST_PER_CLASS`` per class held out."""
    labels = R.digits_24()[1]
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test, rest = {}, {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[c], rest[c] = np.sort(idx[:DIGITS_TEST_PER_CLASS]), np.sort(idx[DIGITS_TEST_PER_CLASS:])
    return {"test": test, "rest": rest}


def _digit_pool(split: str, label: int) -> np.ndarray:
    if split not in ("test", "train", "val", "pretrain"):
        raise ValueError(f"split must be 'test', 'train', 'val' or 'pretrain', got {split!r}")
    return digit_split()["test" if split == "test" else "rest"][label]


# --- the registry ----------------------------------------------------------------------------
DOMAINS: Dict[str, Domain] = {d.name: d for d in (
    Domain("digits", tuple(str(i) for i in range(10)),
           ('a photo of the number: "{}".', "a handwritten digit {}."),
           GREEK, "alias", _digits, _digit_pool),
    Domain("shapes", R.SHAPES,
           ("a photo of a {}.", "a drawing of a {}.", "a {} shape."),
           R.SHAPES, "named", _shapes),
    Domain("counting", COUNT_NAMES,
           ("a photo of {} dots.", "there are {} dots."),
           COUNT_ALIASES, "alias", _counting),
    Domain("textures", TEXTURE_NAMES,
           ("a photo of a {} texture.", "a {} pattern.", "a {} background."),
           TEXTURE_WORDS, "partial", _textures),
    Domain("arrows", ARROW_NAMES,
           ("an arrow pointing {}.", "a photo of an arrow pointing {}."),
           ARROW_ALIASES, "alias", _arrows),
    Domain("colours", R.COLOUR_NAMES,
           ("a photo of a {} shape.", "something {}.", "a {} object."),
           R.COLOUR_NAMES, "named", _colours),
    Domain("positions", POSITIONS,
           ("a shape in the {}.", "a photo of an object at the {}."),
           tuple(p if p in NAMED_POSITIONS else None for p in POSITIONS), "partial", _positions),
)}

DEFAULT_ORDER = ("digits", "shapes", "counting", "textures", "arrows", "colours", "positions")
