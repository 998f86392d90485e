"""The bundled tiny CLIP and ``load_clip``: offline, float32, and its card's figures hold."""
import json

import open_clip
import pytest
import torch

from r1lab.engine.evaluate import evaluate_task, zeroshot_head
from r1lab.engine.models import TINY_DIR, TINY_ENV, ClipBundle, load_clip
from r1lab.data.world import make_world_benchmark
from r1lab.engine import pretrain_world as P


@pytest.fixture(scope="module")
def tiny():
    return load_clip("tiny")


@pytest.fixture
def one_thread():
    """Pretraining sets torch's thread count; use one (steady on a busy machine), then restore."""
    n = torch.get_num_threads()
    yield 1
    torch.set_num_threads(n)


def test_tiny_loads_offline_in_eval_float32(tiny):
    assert isinstance(tiny, ClipBundle) and tiny.name == "tiny"
    assert not tiny.model.training
    assert all(p.dtype == torch.float32 for p in tiny.model.parameters())
    assert tiny.info["parameters"] == sum(p.numel() for p in tiny.model.parameters())
    x = torch.randn(2, 3, 32, 32)
    assert tiny.train_transform(x) is x and tiny.test_transform(x) is x   # world tensors are ready
    tokens = tiny.tokenizer(["a photo of a star."])
    assert tokens.shape == (1, 20)
    with torch.no_grad():
        assert tiny.model.encode_image(x).shape == (2, 128)
        assert tiny.model.encode_text(tokens).shape == (1, 128)
    assert 1.0 < tiny.info["logit_scale"] <= 100.0


def test_zeroshot_matches_the_bundled_figures(tiny):
    """Recompute every domain's zero-shot accuracy from the saved weights: within 1 point
    of data/tiny-clip/zeroshot.json (what the card reports)."""
    recorded = json.loads((TINY_DIR / "zeroshot.json").read_text())["accuracy"]
    bench = make_world_benchmark(seed=0)
    assert set(recorded) == set(bench.task_names)
    for t in bench.tasks:
        head = zeroshot_head(tiny.model, tiny.tokenizer, t.classnames, t.templates)
        acc = evaluate_task(tiny.model, head, t.test)
        assert abs(acc - recorded[t.name]) <= 1.0, (t.name, acc, recorded[t.name])


def test_weights_file_is_small_and_float16():
    from safetensors import safe_open
    path = TINY_DIR / P.WEIGHTS
    assert path.stat().st_size <= 20 * 1024 * 1024
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_plain_open_clip_reads_the_folder(tiny):
    """open_clip's own loader (local-dir) gives the same model as r1lab's."""
    model = open_clip.create_model("local-dir:" + str(TINY_DIR)).eval()
    tok = open_clip.get_tokenizer("local-dir:" + str(TINY_DIR))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    text = ["a photo of a red star.", "there are three dots."]
    assert torch.equal(tok(text), tiny.tokenizer(text))
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), tiny.model.encode_image(x), atol=1e-6)
        assert torch.allclose(model.encode_text(tok(text)), tiny.model.encode_text(tok(text)), atol=1e-6)


def test_missing_folder_names_path_and_rebuild_command(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        load_clip("tiny", pretrained=str(missing))
    assert str(missing) in str(e.value) and "python -m r1lab.engine.pretrain_world" in str(e.value)
    monkeypatch.setenv(TINY_ENV, str(tmp_path / "from-env"))
    with pytest.raises(FileNotFoundError, match="from-env"):
        load_clip("tiny")


def test_pretrain_smoke(tmp_path, monkeypatch, one_thread):
    """Three steps at batch 16 write every artefact, and the result loads."""
    out = tmp_path / "clip"
    assert P.main(["--out", str(out), "--steps", "3", "--batch", "16", "--quiet", "--no-probe",
                   "--eval-per-class", "4", "--threads", str(one_thread)]) == 0
    for name in (P.CONFIG, P.WEIGHTS, P.ZEROSHOT, P.CARD):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    zs = json.loads((out / P.ZEROSHOT).read_text())
    assert set(zs["accuracy"]) == set(make_world_benchmark().task_names)
    assert "Continual-learning yardstick" in (out / P.CARD).read_text()
    monkeypatch.setenv(TINY_ENV, str(out))
    assert load_clip("tiny").info["weights"] == str(out / P.WEIGHTS)


def test_pretrain_resumes_bit_for_bit(tmp_path, one_thread):
    """A run stopped after its checkpoint and started again ends with the same weights as
    one that never stopped (model, optimiser and data stream are all restored)."""
    kw = dict(steps=4, batch=8, warmup=2, progress=False, threads=one_thread)
    straight, _, _ = P.pretrain(**kw)
    ck = tmp_path / P.CHECKPOINT
    P.pretrain(**kw, checkpoint=ck, checkpoint_every=2)     # leaves the step-2 checkpoint behind
    assert torch.load(ck, weights_only=False)["step"] == 2
    resumed, _, log = P.pretrain(**kw, checkpoint=ck, checkpoint_every=2)
    assert log["resumed"] == 1
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="another run"):
        P.pretrain(**{**kw, "steps": 5}, checkpoint=ck)


def test_soft_target_loss():
    """Identical captions are all positives: with two copies of one caption the loss is the
    same whichever of the two images matches which copy."""
    torch.manual_seed(0)
    v, u = torch.randn(4, 8), torch.randn(4, 8)
    caps = ["a", "a", "b", "c"]
    scale = torch.tensor(2.0)
    swapped = u[[1, 0, 2, 3]]
    assert torch.allclose(P.clip_loss(v, u, scale, caps), P.clip_loss(v, swapped, scale, caps))
    # all captions distinct: the usual CLIP loss with one-hot targets
    caps = ["a", "b", "c", "d"]
    logits = scale.exp() * torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(u, dim=-1).T
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(4))
                 + torch.nn.functional.cross_entropy(logits.T, torch.arange(4)))
    assert torch.allclose(P.clip_loss(v, u, scale, caps), ref)


def test_lr_schedule():
    lrs = [P.lr_at(s, 100, 1e-3, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-5
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_other_models_use_protocol_transforms(monkeypatch):
    """A non-tiny name goes through open_clip.create_model; no weights here (random init)."""
    calls = {}

    def small(name, pretrained=None, **kw):
        calls["args"] = (name, pretrained)
        torch.manual_seed(0)
        return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=64, patch_size=16, width=64, layers=1,
                                                            head_width=32),
                              text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=1))

    monkeypatch.setattr(open_clip, "create_model", small)
    b = load_clip("ViT-B-16-quickgelu", None)
    assert calls["args"] == ("ViT-B-16-quickgelu", None)
    assert not b.model.training and b.info["image_size"] == 64
    from PIL import Image
    img = Image.new("RGB", (100, 80), (200, 10, 10))
    assert b.test_transform(img).shape == (3, 64, 64) and b.train_transform(img).shape == (3, 64, 64)
