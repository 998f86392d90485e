"""Image-caption pairs for pretraining the tiny CLIP.

Every pair is drawn fresh from a seeded generator (about 0.1 ms each). The mixture:

    object scenes   50 %  one shape: "a photo of a small red star in the top left on a
                          checkered background."  (shape word 85 %, colour word 85 %,
                          named positions 60 % of the time, a faint texture behind 20 %)
    textures        14 %  "a red and blue checkered pattern."
    counting        12 %  "a trio of red beads."             (alias words, never "dots")
    arrows          12 %  "a red pointer heading northeast."  (alias words, never "arrow")
    digits          12 %  "a red gamma rune."                 (Greek names, never the digit)

Together 36 % of the pairs come from the alias-only domains. Those images are seen, so the
image tower learns features for them; their captions use words that never occur in those
domains' prompts (``domains.py`` lists them), so the zero-shot head knows nothing about them:
"visual coverage without language coverage" (docs/world.md, lesson 1).

Captions are short and repeat often within a batch, which is why pretraining uses soft
targets over identical captions (``pretrain.clip_loss``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from r1lab.data.world import render as R
from r1lab.data.world.domains import (ARROW_ALIASES, COUNT_ALIASES, DOMAINS, GREEK, NAMED_POSITIONS, POSITIONS,
                      TEXTURE_WORDS, object_scene)

SOURCES = ("object", "texture", "counting", "arrows", "digits")
MIX = (0.50, 0.14, 0.12, 0.12, 0.12)             # probability of each source
FRAMES = ("{}.", "a photo of {}.", "a drawing of {}.")


def article(phrase: str) -> str:
    """'a' or 'an' + phrase."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def object_caption(frame: str, size: Optional[str], colour: Optional[str], noun: str,
                   position: Optional[str], texture_word: Optional[str]) -> str:
    """'a photo of a small red star in the top left on a checkered background.' With both a
    position and a background the size word is dropped, so the longest caption keeps within
    the 20-token context (18 words + start and end)."""
    if position and texture_word:
        size = None
    words = " ".join(w for w in (size, colour, noun) if w)
    if position:
        words += f" in the {position}"
    if texture_word:
        words += f" on {article(texture_word)} background"
    return frame.format(article(words))


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[rng.integers(len(seq))]


def object_pair(rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    cell = int(rng.integers(9)) if rng.random() < 0.4 else None
    texture = int(rng.integers(len(R.TEXTURES))) if rng.random() < 0.2 else None
    img, f = object_scene(rng, cell=cell, texture=None if texture is None else R.TEXTURES[texture])
    size_word = None
    if cell is None and f["size"] < 3.8 and rng.random() < 0.5:
        size_word = "small"
    elif cell is None and f["size"] > 6.2 and rng.random() < 0.5:
        size_word = "large"
    elif cell is not None and rng.random() < 0.3:
        size_word = "small"
    colour = f["colour"] if rng.random() < 0.85 else None
    noun = f["shape"] if rng.random() < 0.85 else _pick(rng, ("shape", "object"))
    position = None
    if cell is not None and POSITIONS[cell] in NAMED_POSITIONS and rng.random() < 0.6:
        position = POSITIONS[cell]
    tex_word = TEXTURE_WORDS[texture] if texture is not None and rng.random() < 0.5 else None
    if colour and noun in ("shape", "object") and not (size_word or position or tex_word) \
            and rng.random() < 0.3:
        caption = f"something {colour}."
    else:
        caption = object_caption(_pick(rng, FRAMES), size_word, colour, noun, position, tex_word)
    return img, caption


def texture_caption(frame: str, colours: Optional[Tuple[str, str]], word: str, noun: str) -> str:
    """'a red and blue checkered pattern.'"""
    head = f"{colours[0]} and {colours[1]} {word}" if colours else word
    return frame.format(article(f"{head} {noun}"))


def texture_pair(rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    label = int(rng.integers(len(R.TEXTURES)))
    img, n1, n2 = R.texture_image(R.TEXTURES[label], rng)
    colours = (n1, n2) if rng.random() < 0.4 else None
    noun = _pick(rng, ("pattern", "texture", "background"))
    return img, texture_caption(_pick(rng, FRAMES), colours, TEXTURE_WORDS[label], noun)


def alias_caption(source: str, frame: str, alias: str, colour: Optional[str]) -> str:
    """Captions of the alias-only domains, e.g. 'a trio of red beads.',
    'a red pointer heading northeast.', 'a red gamma rune.'"""
    c = f"{colour} " if colour else ""
    if source == "counting":
        return frame.format(article(f"{alias} of {c}beads"))
    if source == "arrows":
        return frame.format(article(f"{c}pointer heading {alias}"))
    if source == "digits":
        return frame.format(article(f"{c}{alias} rune"))
    raise ValueError(f"no alias captions for {source!r}")


def alias_pair(source: str, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    domain = DOMAINS[source]
    label = int(rng.integers(domain.num_classes))
    img, facts = domain.sample_one(rng, label, split="pretrain")
    colour = facts["colour"] if rng.random() < 0.5 else None
    alias = {"counting": COUNT_ALIASES, "arrows": ARROW_ALIASES, "digits": GREEK}[source][label]
    return img, alias_caption(source, _pick(rng, FRAMES), alias, colour)


def pretraining_batch(rng: np.random.Generator, n: int) -> Tuple[np.ndarray, List[str]]:
    """n fresh pairs: images float32 (n, 32, 32, 3) in [0, 1] (noise added at the end, for
    the whole batch) and their captions."""
    sources = rng.choice(len(SOURCES), size=n, p=MIX)
    imgs, caps = [], []
    for s in sources:
        name = SOURCES[s]
        if name == "object":
            img, cap = object_pair(rng)
        elif name == "texture":
            img, cap = texture_pair(rng)
        else:
            img, cap = alias_pair(name, rng)
        imgs.append(img)
        caps.append(cap)
    return R.finish(np.stack(imgs), rng), caps
