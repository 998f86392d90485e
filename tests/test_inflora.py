"""InfLoRA (r1lab/methods/inflora.py): the designed A and the kept basis M checked by hand.

Defining property: after task 1 a layer keeps an orthonormal basis M of its inputs; task 2's A
is designed in the complement of span(M) and never trained, so the update of task 2 satisfies
Delta W_2 M = 0 (max |s B A M| <= ORTHO_TOL * max |s B A|, float32 storage of A and M) while B
trains. The design and the GPM basis growth are recomputed with numpy on a toy layer, and two
planted bugs (A not projected, A trainable) make the same check fail.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import r1lab
from r1lab import DACConfig
from r1lab.engine.train import task_seed
from r1lab.errors import ConfigError
from r1lab.methods import inflora

sys.path.insert(0, str(Path(__file__).parent))
from engine_setup import CFG, fake_benchmark, random_bundle

ORTHO_TOL = 1e-5      # max |Delta W M| relative to max |Delta W|; measured ~1e-7 (float32)
PROJ_TOL = 1e-6       # projectors by hand against the layer's (float32 A and M)


# ----------------------------------------------------------------------------- by hand
def top_eigvecs(C: np.ndarray, n: int) -> np.ndarray:
    """The n leading eigenvectors of the symmetric C as columns."""
    w, V = np.linalg.eigh(C)
    return V[:, np.argsort(w)[::-1][:n]]


def complement(M: np.ndarray) -> np.ndarray:
    """An orthonormal basis (d, d - k) of the complement of span(M), from the SVD of M."""
    d, k = M.shape
    if k == 0:
        return np.eye(d)
    U, _, _ = np.linalg.svd(M, full_matrices=True)
    return U[:, k:]


def design_by_hand(C: np.ndarray, M: np.ndarray, r: int) -> np.ndarray:
    """(d, min(r, d - k)): the top-r eigenvectors of C restricted to the complement of M."""
    Q = complement(M)
    return Q @ top_eigvecs(Q.T @ C @ Q, min(r, Q.shape[1]))


def grow_by_hand(C: np.ndarray, M: np.ndarray, eps: float) -> np.ndarray:
    """GPM: add the leading residual directions until ||M^T X||^2 + sum lambda >= eps ||X||^2."""
    Q = complement(M)
    w, V = np.linalg.eigh(Q.T @ C @ Q)
    order = np.argsort(w)[::-1]
    w, V = w[order], Q @ V[:, order]
    total, energy, n = np.trace(C), np.trace(M.T @ C @ M), 0
    while energy < eps * total and n < len(w):
        energy += w[n]
        n += 1
    return np.concatenate([M, V[:, :n]], axis=1)


def projector(U: np.ndarray) -> np.ndarray:
    return U @ U.T


def toy_cfg(**kw) -> DACConfig:
    return r1lab.get_method("inflora").configure(
        CFG.replace(rank=2, top_k=2, merge_k=2, dropout=0.0, **kw))


def toy_batches(seed: int, d: int = 8, rank: int = 8):
    """Three (N, L, d) batches of anisotropic inputs (distinct eigenvalues) in a rank-``rank``
    subspace."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, d, generator=g, dtype=torch.float64) * torch.linspace(3, 0.5, rank)[:, None].double()
    return [(torch.randn(5, 3, rank, generator=g, dtype=torch.float64) @ mix).float() for _ in range(3)]


def cov_of(batches) -> np.ndarray:
    X = np.concatenate([b.reshape(-1, b.shape[-1]).double().numpy() for b in batches])
    return X.T @ X


def run_toy_task(pool, batches):
    pool.train()
    for b in batches:
        pool(b)
    A = pool.A.detach().double().numpy().copy()
    merged = pool.end_task()
    return A, merged


# ----------------------------------------------------------------------------- the toy layer
def test_design_and_basis_growth_equal_the_hand_computation():
    torch.manual_seed(0)
    eps = 0.9
    pool = inflora.InfLoRAPool(nn.Linear(16, 5), toy_cfg(inflora_threshold=eps))
    assert pool.basis.shape == (16, 0) and not pool.A.requires_grad
    M = np.zeros((16, 0))
    for task, seed in enumerate((1, 2, 3)):
        batches = toy_batches(seed, d=16, rank=5)
        A, merged = run_toy_task(pool, batches)
        assert torch.equal(merged, torch.arange(2))                         # all r merged
        V = design_by_hand(cov_of(batches[:1]), M, 2)     # designed from the first batch
        assert np.abs(projector(A.T) - projector(V)).max() < PROJ_TOL, task
        assert np.abs(A @ A.T - np.eye(2)).max() < PROJ_TOL                 # orthonormal rows
        C = cov_of(batches)
        M_new = grow_by_hand(C, M, eps)
        got = pool.basis.double().numpy()
        assert got.shape == M_new.shape, task
        assert np.abs(projector(got) - projector(M_new)).max() < PROJ_TOL, task
        assert np.abs(got.T @ got - np.eye(got.shape[1])).max() < PROJ_TOL
        # the threshold: the new directions reach eps of the task's energy, one fewer does not
        need = eps * np.trace(C)
        assert np.trace(got.T @ C @ got) >= need * (1 - 1e-9)
        if got.shape[1] > M.shape[1]:
            fewer = got[:, :-1]
            assert np.trace(fewer.T @ C @ fewer) < need
        M = M_new
    assert 6 < M.shape[1] < 16


def test_a_full_basis_leaves_zero_rows_and_warns():
    """Task 1 fills 7 of 8 directions (eps = 1, rank-7 inputs): task 2's A has one row in the
    remaining direction and one zero row, with a warning."""
    pool = inflora.InfLoRAPool(nn.Linear(8, 5), toy_cfg(inflora_threshold=1.0))
    run_toy_task(pool, toy_batches(1, rank=7))
    assert pool.basis.shape == (8, 7)
    last = complement(pool.basis.double().numpy())[:, 0]
    with pytest.warns(RuntimeWarning, match="fewer than r directions"):
        A, _ = run_toy_task(pool, toy_batches(2))
    assert abs(abs(A[0] @ last) - 1) < PROJ_TOL and np.all(A[1] == 0)


def test_a_bad_configuration_is_a_config_error_naming_the_field():
    method = r1lab.get_method("inflora")
    for field, value in (("consolidate", 0.5), ("merge_rule", "svd"), ("selection", "sample")):
        with pytest.raises(ConfigError, match=field):
            method.configure(CFG.replace(**{field: value}))
    with pytest.raises(ConfigError, match="inflora_threshold"):
        method.configure(CFG.replace(inflora_threshold=1.5))
    with pytest.raises(ConfigError, match="inflora_threshold"):
        r1lab.run_stream(fake_benchmark(), random_bundle(), CFG.replace(inflora_threshold=0.0),
                         "inflora", progress=False)


# ----------------------------------------------------------------------------- the defining property
def train_two_tasks():
    """Task 1 trained and merged, task 2 trained: (pools, M after task 1, A at task 2's first
    step). As the engine does: seed, reset, train, end_task."""
    method = r1lab.get_method("inflora")
    bundle, bench = random_bundle(), fake_benchmark()
    cfg = method.configure(CFG)
    pools = method.attach(bundle.model, cfg)
    first = {}

    def train(t):
        torch.manual_seed(task_seed(cfg, t))
        pools.reset()
        task = bench.tasks[t]

        def on_step(step, _loss):
            if t == 1 and step == 0:
                first.update({n: p.A.detach().clone() for n, p in pools.items()})
        r1lab.train_task(bundle.model, bundle.tokenizer, pools, task, task.train, cfg, t,
                         progress=False, method=method, on_step=on_step)

    train(0)
    method.end_task(pools)
    basis = {n: p.basis.detach().clone() for n, p in pools.items()}
    train(1)
    return pools, basis, first


def property_failures(pools, basis, first):
    """What breaks InfLoRA's property, computed by hand: Delta W_2 = s B A must vanish on M,
    A must be the designed one (no gradient, not moved), B must train."""
    bad = []
    for n, p in pools.items():
        dW = p.scale * p.B.detach() @ p.A.detach()
        leak = (dW @ basis[n]).abs().max() / dW.abs().max()
        if not leak <= ORTHO_TOL:
            bad.append(f"{n}: |Delta W M| / |Delta W| = {leak:.2e}")
        if p.A.grad is not None or p.A.requires_grad or not torch.equal(p.A, first[n]):
            bad.append(f"{n}: A was trained")
        if not p.B.abs().sum() > 0:
            bad.append(f"{n}: B did not train")
    return bad


@pytest.fixture(scope="module")
def two_tasks():
    return train_two_tasks()


def test_the_new_update_does_not_touch_earlier_inputs(two_tasks):
    pools, basis, first = two_tasks
    assert all(0 < M.shape[1] < M.shape[0] for M in basis.values())
    for M in basis.values():
        assert (M.T @ M - torch.eye(M.shape[1])).abs().max() < 1e-5        # orthonormal
    assert property_failures(pools, basis, first) == []
    # and the layer's output on an earlier task's input direction is W0 x + b
    name, p = next(iter(pools.items()))
    x = basis[name].T.clone()                                               # k inputs in span(M)
    with torch.no_grad():
        p.eval()
        assert torch.allclose(p(x), p.base(x), atol=1e-6)


def unprojected_design(cov, basis, rank):
    return PLAIN_DESIGN(cov, basis[:, :0], rank)     # the top-r eigenvectors of C itself


PLAIN_DESIGN = inflora.design_rows


FROZEN_RESET = inflora.InfLoRAPool.reset


def trainable_A(self):
    FROZEN_RESET(self)
    self.A.requires_grad_(True)


@pytest.mark.parametrize("bug", ["A not projected", "A trainable"])
def test_a_planted_bug_is_caught(bug, monkeypatch):
    if bug == "A not projected":
        monkeypatch.setattr(inflora, "design_rows", unprojected_design)
    else:
        monkeypatch.setattr(inflora.InfLoRAPool, "reset", trainable_A)
    bad = property_failures(*train_two_tasks())
    assert any("Delta W M" in b for b in bad)
    assert any("A was trained" in b for b in bad) == (bug == "A trainable")


# ----------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("inflora") / "full"
    return r1lab.run_stream(fake_benchmark(), random_bundle(), CFG, "inflora", out, progress=False)


def check_result(res):
    assert res.accuracy.shape == (3, 3) and np.isfinite(res.accuracy).all()
    assert res.metrics is not None
    for merged in res.merged:                       # every pool merges all r experts
        assert len(merged) == 24 and all(torch.equal(v, torch.arange(CFG.rank)) for v in merged.values())
    assert all(isinstance(p, inflora.InfLoRAPool) for p in res.pools.values())


def test_the_engine_runs_inflora_by_name(full_run):
    check_result(full_run)


def test_the_engine_runs_inflora_in_the_union_label_space():
    bench = fake_benchmark().with_label_space("union")
    check_result(r1lab.run_stream(bench, random_bundle(), CFG, "inflora", progress=False))


def test_stop_and_resume_gives_the_same_run(full_run, tmp_path):
    part = r1lab.run_stream(fake_benchmark(), random_bundle(), CFG, "inflora", tmp_path,
                            progress=False, stop_after=2)
    assert np.isnan(part.accuracy[2:]).all()
    rest = r1lab.run_stream(fake_benchmark(), random_bundle(), CFG, "inflora", tmp_path, progress=False)
    assert np.array_equal(rest.accuracy, full_run.accuracy)
    for n, p in full_run.pools.items():
        q = rest.pools[n]
        assert torch.equal(q.basis, p.basis) and torch.equal(q.base.weight, p.base.weight)
