"""Loading a CLIP for r1lab: the bundled tiny one (offline default) or any open_clip model.

    b = load_clip("tiny")                                   # data/tiny-clip, no network
    b = load_clip("ViT-B-16-quickgelu", "openai")           # the paper's model (downloads)
    b = load_clip("ViT-B-16-quickgelu", "/path/weights.pt") # a local weights file
    b.model, b.tokenizer, b.train_transform, b.test_transform

Every model is returned in eval mode and float32.

"tiny" is read from ``data/tiny-clip`` next to the package, or from the folder named by the
environment variable ``R1LAB_TINY_CLIP``, or from a folder passed as ``pretrained``. Its
weights are stored in float16 (16 MB) and cast to float32 here. Its transforms are the
identity: the generated world (``r1lab.data.world``) already hands out normalised 32 x 32 tensors.
Plain open_clip reads the same folder too: ``open_clip.create_model("local-dir:<folder>")``
copies the float16 values into float32 parameters and gives the same model
(``tests/test_models.py`` checks this).

Any other name goes through ``open_clip.create_model(name, pretrained=pretrained)`` with the
docs/protocol.md preprocessing (train: RandomResizedCrop(224, scale 0.9-1.0, bicubic); test:
Resize(224, bicubic) + CenterCrop(224); both CLIP mean / std normalisation).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch

log = logging.getLogger(__name__)

TINY_DIR = Path(__file__).resolve().parents[2] / "data" / "tiny-clip"
TINY_ENV = "R1LAB_TINY_CLIP"
TINY_REBUILD = "python -m r1lab.engine.pretrain_world --out data/tiny-clip --steps 1500 --seed 0"


@dataclass
class ClipBundle:
    """A CLIP and what using it takes.

    model            open_clip CLIP, eval mode, float32
    tokenizer        callable: list of strings -> (N, context_length) token ids
    train_transform  applied to training images (identity for tensors that are ready)
    test_transform   applied to test images
    name             "tiny" or the open_clip model name
    info             facts for the run record (weights source, image size, parameters, ...)
    """
    model: torch.nn.Module
    tokenizer: Callable
    train_transform: Callable
    test_transform: Callable
    name: str
    info: Dict = field(default_factory=dict)


def identity(x):
    """The tiny CLIP's transform: world tensors are already 3 x 32 x 32 and normalised."""
    return x


def tiny_clip_dir(pretrained: Optional[Union[str, Path]] = None) -> Path:
    """Where the tiny CLIP is read from: ``pretrained`` (a folder), else $R1LAB_TINY_CLIP,
    else ``data/tiny-clip`` in the repository."""
    if pretrained:
        return Path(pretrained)
    return Path(os.environ[TINY_ENV]) if os.environ.get(TINY_ENV) else TINY_DIR


def load_tiny_clip(folder: Union[str, Path], device="cpu") -> ClipBundle:
    """The bundled tiny CLIP from a folder holding ``open_clip_config.json`` and the float16
    ``open_clip_model.safetensors`` written by ``r1lab.engine.pretrain_world``."""
    import open_clip
    from safetensors.torch import load_file
    folder = Path(folder)
    cfg_path, weights = folder / "open_clip_config.json", folder / "open_clip_model.safetensors"
    missing = [p.name for p in (cfg_path, weights) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"tiny CLIP not found: {folder} lacks {', '.join(missing)}. Rebuild it (about 10 min "
            f"on 2 CPU cores) with\n    {TINY_REBUILD.replace('data/tiny-clip', str(folder))}\n"
            f"or point ${TINY_ENV} at a folder that has it.")
    model_cfg = json.loads(cfg_path.read_text())["model_cfg"]
    model = open_clip.model.CLIP(**model_cfg)
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=True)
    model = model.to(device=device, dtype=torch.float32).eval()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])
    info = {"weights": str(weights), "image_size": model_cfg["vision_cfg"]["image_size"],
            "context_length": model_cfg["text_cfg"]["context_length"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "logit_scale": round(model.logit_scale.exp().item(), 3),
            "transforms": "identity (world tensors are pre-normalised)"}
    zs = folder / "zeroshot.json"
    if zs.is_file():
        info["zeroshot"] = json.loads(zs.read_text()).get("accuracy")
    return ClipBundle(model, tokenizer, identity, identity, "tiny", info)


def load_clip(name: str = "tiny", pretrained: Optional[str] = None, device="cpu") -> ClipBundle:
    """A ``ClipBundle`` by name (see the module docstring).

    name        "tiny", or an open_clip model name such as "ViT-B-16-quickgelu"
    pretrained  tiny: a folder (default: $R1LAB_TINY_CLIP or data/tiny-clip);
                other names: an open_clip tag ("openai", needs the network once), a local
                weights file, or None for random weights
    """
    if name == "tiny":
        return load_tiny_clip(tiny_clip_dir(pretrained), device)
    import open_clip
    from r1lab.data.mtil.folders import mtil_transforms
    if pretrained is None:
        log.warning("load_clip(%r): no pretrained weights given, the model is randomly initialised", name)
    model = open_clip.create_model(name, pretrained=pretrained, device=device, precision="fp32")
    model = model.float().eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    tf = mtil_transforms(size)
    info = {"weights": pretrained or "random", "image_size": size,
            "context_length": getattr(model, "context_length", None),
            "parameters": sum(p.numel() for p in model.parameters()),
            "logit_scale": round(model.logit_scale.exp().item(), 3),
            "transforms": "docs/protocol.md: RandomResizedCrop(scale 0.9-1.0, bicubic) / Resize + CenterCrop"}
    return ClipBundle(model, open_clip.get_tokenizer(name), tf.train, tf.test, name, info)


def model_input_size(model: str = "tiny", pretrained: Optional[str] = None, default: int = 224) -> int:
    """The image side a model takes, read from its configuration without building it."""
    try:
        if model == "tiny":
            cfg = json.loads((tiny_clip_dir(pretrained) / "open_clip_config.json").read_text())
            size = cfg["model_cfg"]["vision_cfg"]["image_size"]
        else:
            import open_clip
            size = (open_clip.get_model_config(model) or {})["vision_cfg"]["image_size"]
    except (OSError, KeyError, ValueError, TypeError):
        return default
    return int(size[0] if isinstance(size, (list, tuple)) else size)
