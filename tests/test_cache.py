"""Preprocessed test-set cache: lossless for 8-bit images, float16 otherwise, reused."""
import torch
from torch.utils.data import Dataset

from r1lab.engine.testset_cache import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, CachedImages, build_cache, cached_test_sets
from r1lab.data.stream import Benchmark, Task

MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)


class Pixels(Dataset):
    """Like a torchvision test set: 8-bit pixels, ToTensor, CLIP normalisation."""
    def __init__(self, n=10, size=8, exact=True):
        g = torch.Generator().manual_seed(0)
        self.px = torch.randint(0, 256, (n, 3, size, size), generator=g)
        self.exact = exact
        self.reads = 0

    def __len__(self):
        return len(self.px)

    def __getitem__(self, i):
        self.reads += 1
        x = self.px[i].float() / 255.0
        if not self.exact:
            x = x + 0.3 / 255.0        # not on the 8-bit grid any more
        return (x - MEAN) / STD, i % 3


def test_uint8_cache_is_lossless(tmp_path):
    ds = Pixels()
    c = build_cache(ds, tmp_path / "t.npy", batch_size=4)
    assert c.mode == "uint8" and c.images.dtype.itemsize == 1
    for i in range(len(ds)):
        x, y = c[i]
        x0, y0 = ds[i]
        assert torch.allclose(x, x0, atol=1e-5) and int(y) == y0


def test_float16_fallback(tmp_path):
    ds = Pixels(exact=False)
    c = build_cache(ds, tmp_path / "t.npy", batch_size=4)
    assert c.mode == "float16"
    assert torch.allclose(c[3][0], ds[3][0], atol=2e-3)


def test_cached_test_sets_build_once_then_reuse(tmp_path):
    ds = Pixels()
    bm = Benchmark("b", [Task("t", ["a", "b", "c"], ["{}"], ds, ds)])
    first = cached_test_sets(bm, tmp_path)
    reads = ds.reads
    again = cached_test_sets(bm, tmp_path)
    assert ds.reads == reads, "the second call must not touch the dataset"
    assert isinstance(again[0], CachedImages) and torch.equal(again[0][5][0], first[0][5][0])
    assert (tmp_path / "t.npy").exists() and not list(tmp_path.glob(".*tmp"))


def test_a_cache_built_from_other_data_is_rebuilt(tmp_path):
    """The metadata records what the cache was built from (length, transform, files, indices)."""
    from torch.utils.data import Subset
    ds = Pixels()
    bm = Benchmark("b", [Task("t", ["a", "b", "c"], ["{}"], Subset(ds, range(10)), Subset(ds, range(10)))])
    cached_test_sets(bm, tmp_path)
    reads = ds.reads
    other = Benchmark("b", [Task("t", ["a", "b", "c"], ["{}"], ds, Subset(ds, list(range(9, -1, -1))))])
    again = cached_test_sets(other, tmp_path)               # same name and length, other images
    assert ds.reads == reads + 10
    assert torch.allclose(again[0][0][0], ds[9][0], atol=1e-5)


def test_cache_files_are_published_with_the_users_permissions(tmp_path):
    import os
    umask = os.umask(0)
    os.umask(umask)
    build_cache(Pixels(), tmp_path / "t.npy", batch_size=4)
    for f in ("t.npy", "t.npy.json"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
