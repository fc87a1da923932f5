"""Shared fixtures. Real-data tests read ../shared/data and skip with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
# Ledgers hash deleted pairs under a per-deployment secret (tru_dist.unlearn.keyhash); tests use a
# fixed one so that they never create ~/.config/tru-dist/ledger-secret on the machine running them.
os.environ.setdefault("TRU_DIST_LEDGER_SECRET", "tests-only-ledger-secret-0123456789abcdef")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a shared real dataset, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {path} is absent (it ships with CI's shared/ folder, not with a clone)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny graphs run faster on one intra-op thread, and CI's 2 cores stay predictable."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_data():
    """The ``synthetic:tiny`` dataset (~200 users, 120 items, image+text), in memory: tests that
    also name ``data.path=synthetic:tiny`` (Ray workers regenerate it) see the same data."""
    from tru_dist.data.source import open_data

    return open_data("synthetic:tiny")


@pytest.fixture(scope="session")
def never_trained_data(tiny_data):
    """``synthetic:tiny`` with 15 items made never-trained (their train pairs relabelled test): a
    catalogue that, like Amazon's, holds items no train pair ever used."""
    from dataclasses import replace

    import numpy as np

    from tru_dist.data.dataset import TEST, TRAIN

    labels = tiny_data.labels.copy()
    train = labels == TRAIN
    trained = np.flatnonzero(np.bincount(tiny_data.items[train], minlength=tiny_data.n_items) > 0)
    labels[train & np.isin(tiny_data.items, trained[:15])] = TEST
    return replace(tiny_data, labels=labels)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (``ray.init`` costs ~5 s): 2 CPUs, auth and
    usage stats off, the dashboard on 127.0.0.1 (a free port) because W > 1 sweeps need the
    state API it serves. Reuses a Ray that another fixture already started."""
    import socket

    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 configure_logging=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
