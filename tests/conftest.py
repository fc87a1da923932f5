"""Shared fixtures. Real-data tests read ../shared/data and skip with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a shared real dataset, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {path} is absent (it ships with CI's shared/ folder, not with a clone)")
    return path


@pytest.fixture(scope="session")
def tiny_data():
    """A tiny planted-cluster dataset (~200 users, 120 items, image+text)."""
    from tru_dist.data.synthetic import generate_synthetic

    return generate_synthetic(n_users=200, n_items=120, n_clusters=4, seed=0,
                              modalities={"image": 16, "text": 8}, mean_extra_interactions=6)
