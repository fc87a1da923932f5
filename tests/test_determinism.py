"""Same config and seed, same bits: deterministic CPU kernels around every gradient step.

With two intra-op threads the backward of ``table[ids]`` (``index_put_`` with accumulation)
adds repeated ids' gradient rows in a scheduling-dependent order; these tests run with two
threads (the suite's default is one, which hides the problem) and hash parameters bit for bit.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import shared_dataset

from tru_dist.train.determinism import deterministic_kernels


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _state_digest(model) -> str:
    return _digest(v for _, v in sorted(model.state_dict().items()))


def test_the_switch_is_set_only_inside_the_block_and_only_for_a_cpu():
    assert not torch.are_deterministic_algorithms_enabled()
    fills = torch.utils.deterministic.fill_uninitialized_memory
    with deterministic_kernels(True, "cpu") as on:
        assert on and torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory == fills
    with deterministic_kernels(False, "cpu") as on:
        assert not on and not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(True, torch.device("cuda", 0)) as on:  # GPUs: unchanged (not measured)
        assert not on and not torch.are_deterministic_algorithms_enabled()


def test_a_caller_that_turned_it_on_keeps_it():
    torch.use_deterministic_algorithms(True)
    try:
        with deterministic_kernels(True, "cpu") as on:
            assert not on
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_the_indexing_backward_adds_in_one_order_inside_the_block(two_threads):
    # 20,000 reads of 1,600 rows: without the switch this gave 14 different gradients in 20 runs
    table = torch.randn(1600, 64, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 1600, (20000,), generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(20000, 64, generator=torch.Generator().manual_seed(2))
    reference = torch.zeros(1600, 64, dtype=torch.float64).index_add_(0, ids, upstream.double())
    digests = set()
    for _ in range(20):
        w = table.clone().requires_grad_(True)
        with deterministic_kernels(True, "cpu"):
            (w[ids] * upstream).sum().backward()
        torch.testing.assert_close(w.grad.double(), reference, rtol=0, atol=1e-4)  # the right sums
        digests.add(_digest([w.grad]))
    assert len(digests) == 1


def test_training_and_unlearning_twice_give_the_same_bits(two_threads):
    """LightGCN on Scientific, 3 epochs, then TRU on 5% of the interactions: without the switch
    every training run gave other parameters (3 hashes in 3 runs), and so did TRU's update."""
    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.data.source import open_data
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.deletion import build_deletion

    path = str(shared_dataset("amazon-scientific"))
    data = open_data(path)
    cfg = build_config(model="lightgcn", data=path,
                       overrides=["train.epochs=3", "train.patience=0", "unlearn.gate.max_epochs=5"])
    forget = forget_set(data, "interactions", 0.05, 100)
    trained, unlearned = set(), set()
    for _ in range(2):
        model, graph, _ = fit(cfg, data)
        trained.add(_state_digest(model))
        deletion = build_deletion(data, graph, forget, reset=True)
        unlearned.add(_state_digest(get_method("tru").unlearn(model, deletion, cfg).model))
    assert len(trained) == 1 and len(unlearned) == 1
    assert trained != unlearned  # the update moved something
    assert not torch.are_deterministic_algorithms_enabled()  # and left the process as it was


@pytest.fixture
def step_switch(monkeypatch):
    """Whether the deterministic switch was on at each optimizer step of the test (torch.optim's
    steps through torch's global hook, the unlearning loop's PlainAdam through its ``step``)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from tru_dist.train.optim import PlainAdam

    seen: list[bool] = []
    plain_step = PlainAdam.step

    def recorded(self):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return plain_step(self)

    monkeypatch.setattr(PlainAdam, "step", recorded)
    switch_on = torch.are_deterministic_algorithms_enabled
    handle = register_optimizer_step_post_hook(lambda *_: seen.append(switch_on()))
    yield seen
    handle.remove()


@pytest.mark.parametrize("flag", [True, False])
def test_the_setting_reaches_training_and_the_unlearning_loop(tiny_data, step_switch, flag):
    from tru_dist.config import Config
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.deletion import build_deletion

    cfg = Config.from_dict({"model": {"name": "lightgcn", "dim": 8},
                            "train": {"epochs": 1, "deterministic": flag},
                            "unlearn": {"epochs": 2, "gate": {"enabled": False}}})
    model, graph, _ = fit(cfg, tiny_data)
    n_train = len(step_switch)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.05, seed=0))
    get_method("reverse_bpr").unlearn(model, deletion, cfg)
    assert 0 < n_train < len(step_switch)  # training steps, then the update's
    assert set(step_switch) == {flag}
    assert not torch.are_deterministic_algorithms_enabled()


def test_interleaved_updates_each_step_with_the_switch_on_and_leave_it_off_between(tiny_data, step_switch):
    """Tune's trainable advances one update per seed in turn: one update ending must not turn the
    switch off under another's steps, and a consumer between epochs runs without it."""
    from tru_dist.config import Config
    from tru_dist.data.regimes import forget_set
    from tru_dist.graph.context import build_rec_graph
    from tru_dist.models.registry import build_model
    from tru_dist.unlearn.deletion import build_deletion
    from tru_dist.unlearn.engine import iter_update
    from tru_dist.unlearn.specs import spec_for

    graph = build_rec_graph(tiny_data)
    runs = []
    for epochs, seed in ((1, 0), (3, 1)):
        cfg = Config.from_dict({"model": {"name": "lightgcn", "dim": 8}, "unlearn": {"epochs": epochs}})
        model = build_model(cfg.model, graph, seed=0)
        deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.05, seed=seed))
        runs.append(iter_update(model, deletion, cfg, spec_for("finetune", cfg)))
    between = []
    live = list(runs)
    while live:
        for run in list(live):
            if next(run, None) is None:
                live.remove(run)
            between.append(torch.are_deterministic_algorithms_enabled())
    assert len(step_switch) > 3 and all(step_switch)  # the longer run's late epochs too
    assert not any(between)
