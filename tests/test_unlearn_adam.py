"""PlainAdam (the unlearning loop's optimizer): bit-identical to torch.optim.Adam, no torch._dynamo import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from tru_dist.train.optim import PlainAdam


def test_matches_torch_adam_bit_for_bit_including_skipped_parameters():
    """Seven steps on three tensors (one skips steps 2 and 5 with grad None, as frozen groups do)."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(40, 8), (8,), (5, 3)]
    ours = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    mine, theirs = PlainAdam(ours, lr=0.05), torch.optim.Adam(ref, lr=0.05)
    for step in range(7):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
            skip = k == 2 and step in (2, 5)
            a.grad = None if skip else grads[k].clone()
            b.grad = None if skip else grads[k].clone()
        mine.step()
        theirs.step()
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(a, b), f"step {step}: {(a - b).abs().max()}"
    assert mine.steps == [7, 7, 5]
    before = [p.detach().clone() for p in ours]
    mine.step()  # grads still set: one more step moves every parameter
    assert all(not torch.equal(a, b) for a, b in zip(ours, before, strict=True))
    mine.zero_grad()
    assert all(p.grad is None for p in ours)


def test_refuses_a_non_positive_learning_rate():
    with pytest.raises(ValueError, match="lr=0"):
        PlainAdam([torch.zeros(2, requires_grad=True)], lr=0.0)


def test_an_unlearning_request_never_imports_torch_dynamo():
    """torch.optim's first optimizer imports torch._dynamo (~1.3 s): a request must not pay it."""
    code = textwrap.dedent("""
        import sys
        import torch
        from tru_dist.config import Config
        from tru_dist.data.regimes import forget_set
        from tru_dist.data.synthetic import generate_synthetic
        from tru_dist.graph.context import build_rec_graph
        from tru_dist.models.registry import build_model
        from tru_dist.unlearn import get_method
        from tru_dist.unlearn.deletion import build_deletion
        torch.set_num_threads(1)
        cfg = Config.from_dict({"model": {"name": "mgcn", "dim": 16, "feat_hidden": 0},
                                "unlearn": {"epochs": 2, "batch_size": 64}})
        data = generate_synthetic(120, 80, seed=0, modalities={"image": 8})
        graph = build_rec_graph(data, knn_k=cfg.model.knn_k)
        model = build_model(cfg.model, graph, seed=0)
        deletion = build_deletion(data, graph, forget_set(data, "interactions", 0.05, seed=0))
        for name in ("reverse_bpr", "tru"):
            result = get_method(name).unlearn(model, deletion, cfg)
            assert result.stats.get("steps", 0) > 0, (name, result.stats)
        assert "torch._dynamo" not in sys.modules, "an optimizer imported torch._dynamo"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
