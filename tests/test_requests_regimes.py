"""Deletion-request tables, their resolution into forget sets, and the selection regimes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.poison import inject_poison
from tru_dist.data.regimes import forget_cli, forget_set, select_forget
from tru_dist.data.requests import ForgetSet, read_requests, resolve_requests, write_requests
from tru_dist.data.store import write_store
from tru_dist.errors import ConfigError, RequestError


@pytest.fixture
def small() -> RecDataset:
    """4 users, 4 items. Rows (user, item, label):
    u0: (0,0,T) (0,1,T) (0,2,V)   u1: (1,1,T) (1,3,X)   u2: (2,0,T) (2,2,T) (2,3,T)   u3: (3,2,T)"""
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    items = np.array([0, 1, 2, 1, 3, 0, 2, 3, 2])
    labels = np.array([0, 0, 1, 0, 2, 0, 0, 0, 0], dtype=np.int8)
    return RecDataset(4, 4, users, items, labels)


def req(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["request_id", "user_id", "item_id", "reason"]).astype(
        {"item_id": "Int64"}
    )


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_request_file_round_trip_keeps_nulls(tmp_path, suffix):
    df = req([("a", 3, 7, "gdpr"), ("b", 5, None, ""), ("c", 0, 0, "poison, fake")])
    path = write_requests(df, tmp_path / f"r{suffix}")
    back = read_requests(path)
    assert back["request_id"].tolist() == ["a", "b", "c"]
    assert back["user_id"].dtype == np.int64 and back["user_id"].tolist() == [3, 5, 0]
    assert back["item_id"].isna().tolist() == [False, True, False]
    assert back.loc[0, "item_id"] == 7 and back.loc[2, "reason"] == "poison, fake"


def test_request_file_errors(tmp_path):
    (tmp_path / "r.csv").write_text("request_id,user_id,item_id,reason\nx,1,,a\ny,two,3,b\n")
    with pytest.raises(RequestError, match="request y has user_id 'two', not an integer id"):
        read_requests(tmp_path / "r.csv")
    (tmp_path / "r.csv").write_text("request_id,user_id,item_id,reason\nx,0.5,3,a\n")  # not np.float64(0.5)
    with pytest.raises(RequestError, match=r"request x has user_id 0\.5, not an integer id"):
        read_requests(tmp_path / "r.csv")
    (tmp_path / "r.csv").write_text("request_id,user_id,item_id,reason\nx,,3,a\n")
    with pytest.raises(RequestError, match="request x has user_id empty"):
        read_requests(tmp_path / "r.csv")
    with pytest.raises(RequestError, match="must end in .parquet or .csv"):
        write_requests(req([("a", 1, 1, "")]), tmp_path / "r.json")
    with pytest.raises(RequestError, match="does not exist"):
        read_requests(tmp_path / "missing.csv")


# ---------------------------------------------------------------- resolution


def test_resolve_user_and_pair_requests(small):
    f = resolve_requests(small, req([("r1", 0, None, "user"), ("r2", 2, 3, "pair"), ("r3", 1, 3, "pair")]))
    assert isinstance(f, ForgetSet)
    pairs = sorted(zip(f.users.tolist(), f.items.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 1), (0, 2), (1, 3), (2, 3)]  # all of u0 (incl. valid), plus two pairs
    assert f.users.dtype == np.int64 and f.items.dtype == np.int64
    assert sorted(zip(f.train_users.tolist(), f.train_items.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (2, 3),
    ]
    assert len(f) == 3  # train pairs only
    assert f.removed_users.tolist() == [0]  # u1 keeps its train row (1, 1); u2 keeps two
    assert f.request_ids == ["r1", "r2", "r3"]
    s = f.summary()
    assert (s["n_deleted"], s["n_deleted_train"], s["n_deleted_valid"], s["n_deleted_test"]) == (5, 3, 1, 1)
    retained = small.without_pairs(f.users, f.items)
    assert retained.n_interactions == small.n_interactions - 5


def test_removed_users_counts_train_only(small):
    # u1's only train pair goes; its test row stays -> u1 is removed (no train left)
    f = resolve_requests(small, req([("a", 1, 1, "")]))
    assert f.removed_users.tolist() == [1] and len(f) == 1


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([("a", 9, None, "")], r"request\(s\) a name unknown user id\(s\) 9 \(valid: 0\.\.3\)"),
        ([("a", 0, 1, ""), ("b", 1, 4, "")], r"request\(s\) b name unknown item id\(s\) 4"),
        (
            [("a", 0, 3, ""), ("b", 0, 1, "")],
            r"request\(s\) a name \(user, item\) pairs that are not interactions.*\(0, 3\)",
        ),
        ([("a", 0, 1, ""), ("a", 2, 3, "")], r"duplicate request_id\(s\) a"),
        ([("a", 2, 3, ""), ("b", 2, None, "")], r"requests a, b all delete \(user 2, item 3\)"),
        ([("a", 2, 3, ""), ("b", 2, 3, ""), ("c", 0, 0, "")],
         r"requests a, b all delete \(user 2, item 3\) \(1 overlapping pair\); keep"),
        (
            [("a", 1, None, ""), ("b", 1, None, "")],
            r"requests a, b each delete all interactions of the same user",
        ),
        ([], r"holds no requests"),
    ],
)
def test_resolve_errors_name_the_requests(small, rows, pattern):
    with pytest.raises(RequestError, match=pattern) as exc:
        resolve_requests(small, req(rows))
    assert "\n" not in str(exc.value)


def test_resolve_missing_columns_and_user_without_rows(small):
    with pytest.raises(RequestError, match="missing column\\(s\\) item_id"):
        resolve_requests(small, pd.DataFrame({"request_id": ["a"], "user_id": [1]}))
    emptied = small.without_pairs(np.array([3]), np.array([2]))
    with pytest.raises(
        RequestError, match="request\\(s\\) z delete users with no interactions left \\(user 3\\)"
    ):
        resolve_requests(emptied, req([("z", 3, None, "")]))


def test_error_lists_only_the_first_few_ids(small):
    rows = [(f"r{k}", 7 + k, None, "") for k in range(8)]
    with pytest.raises(RequestError, match=r"r0, r1, r2, r3, r4 \(\+3 more\)"):
        resolve_requests(small, req(rows))


# ---------------------------------------------------------------- regimes


def test_interactions_regime_size_and_seed(tiny_data):
    n_train = int((tiny_data.labels == TRAIN).sum())
    f = forget_set(tiny_data, "interactions", 0.1, seed=1)
    assert len(f) == len(f.users) == math.floor(0.1 * n_train + 0.5)
    assert (f.labels == TRAIN).all()
    assert len(np.unique(tiny_data.pair_keys(f.users, f.items))) == len(f)
    again = forget_set(tiny_data, "interactions", 0.1, seed=1)
    other = forget_set(tiny_data, "interactions", 0.1, seed=2)
    assert np.array_equal(f.users, again.users) and np.array_equal(f.items, again.items)
    assert not np.array_equal(
        tiny_data.pair_keys(f.users, f.items), tiny_data.pair_keys(other.users, other.items)
    )
    assert f.regime == "interactions"


def test_at_least_one_unit_and_fraction_bounds(tiny_data):
    assert len(select_forget(tiny_data, "users", 1e-6, seed=0)) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
            select_forget(tiny_data, "interactions", bad, seed=0)
    with pytest.raises(ConfigError, match="unknown forget regime 'rows'"):
        select_forget(tiny_data, "rows", 0.1, seed=0)
    with pytest.raises(ConfigError, match="applies to the users regime only"):
        select_forget(tiny_data, "items", 0.1, seed=0, policy="core")


def _train_degree(data: RecDataset) -> np.ndarray:
    return np.bincount(data.users[data.labels == TRAIN], minlength=data.n_users)


@pytest.mark.parametrize("policy", ["core", "edge", "random"])
def test_users_regime_policies(tiny_data, policy):
    f = forget_set(tiny_data, "users", 0.1, seed=0, policy=policy)
    chosen = np.unique(f.users)
    assert len(chosen) == 20 and f.regime == f"users:{policy}"
    # every interaction of a chosen user is deleted, in every split
    assert len(f.users) == np.isin(tiny_data.users, chosen).sum()
    assert np.array_equal(np.sort(f.removed_users), chosen)
    deg = _train_degree(tiny_data)
    # a reporting seed draws from the reporting pool: the policy orders that pool's users
    from tru_dist.data.regimes import unit_pool

    assert (unit_pool(chosen) == 0).all()
    rest = np.setdiff1d(np.flatnonzero((unit_pool(np.arange(tiny_data.n_users)) == 0) & (deg > 0)), chosen)
    if policy == "core":
        assert deg[chosen].min() >= deg[rest].max()
    elif policy == "edge":
        assert deg[chosen].max() <= deg[rest].min()
    df = select_forget(tiny_data, "users", 0.1, seed=0, policy=policy)
    assert df["item_id"].isna().all() and df["request_id"].is_unique


def test_core_and_edge_ties_are_broken_by_the_seed(tiny_data):
    deg = _train_degree(tiny_data)
    a = np.unique(forget_set(tiny_data, "users", 0.1, seed=0, policy="edge").users)
    b = np.unique(forget_set(tiny_data, "users", 0.1, seed=7, policy="edge").users)
    boundary = deg[a].max()
    assert (deg == boundary).sum() > (deg[a] == boundary).sum()  # the cut falls inside a tie
    assert not np.array_equal(a, b)
    assert np.array_equal(np.sort(deg[a]), np.sort(deg[b]))  # same degrees, different users


def test_items_regime_removes_every_interaction_of_targets(tiny_data):
    f = forget_set(tiny_data, "items", 0.05, seed=3)
    targets = np.unique(f.items)
    n_live = len(np.unique(tiny_data.items[tiny_data.labels == TRAIN]))
    assert len(targets) == math.floor(0.05 * n_live + 0.5)
    assert len(f.users) == np.isin(tiny_data.items, targets).sum()
    retained = tiny_data.without_pairs(f.users, f.items)
    assert not np.isin(retained.items, targets).any()


def test_poison_regime_deletes_exactly_the_fake_users(tiny_data):
    with pytest.raises(ConfigError, match="needs a poisoned dataset"):
        select_forget(tiny_data, "poison", 1.0, seed=0)
    poisoned = inject_poison(tiny_data, fake_user_fraction=0.03, seed=1)
    f = forget_set(poisoned, "poison", 1.0, seed=0)
    fake = poisoned.meta["poison"]["fake_users"]
    assert np.unique(f.users).tolist() == fake and f.removed_users.tolist() == fake
    retained = poisoned.without_pairs(f.users, f.items)
    assert np.array_equal(retained.users, tiny_data.users) and np.array_equal(retained.items, tiny_data.items)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_forget_cli_writes_a_resolvable_request_file(tiny_data, tmp_path, suffix):
    write_store(tiny_data, tmp_path / "s")
    out = tmp_path / f"forget{suffix}"
    summary = forget_cli(tmp_path / "s", "users", "core", 0.05, 0, out)
    assert summary["n_requests"] == 10 and summary["out"] == str(out)
    f = resolve_requests(tiny_data, read_requests(out))
    expected = forget_set(tiny_data, "users", 0.05, 0, "core")
    assert np.array_equal(f.users, expected.users) and np.array_equal(f.items, expected.items)


@pytest.mark.parametrize("regime", ["interactions", "users", "items"])
def test_tuning_and_reporting_forget_sets_are_disjoint(tiny_data, regime):
    """No pair, user (users regime) or target item (items regime) drawn with a tuning seed
    (>= 100) is ever drawn with a reporting seed (< 100): the pools are fixed by id."""
    from tru_dist.data.regimes import unit_pool

    tune = [forget_set(tiny_data, regime, 0.05, seed) for seed in (100, 101, 102)]
    report = [forget_set(tiny_data, regime, 0.05, seed) for seed in range(5)]

    def units(f):
        if regime == "users":
            return set(f.users.tolist())
        if regime == "items":
            return set(f.items.tolist())
        return set(zip(f.users.tolist(), f.items.tolist(), strict=True))

    tuned = set().union(*map(units, tune))
    reported = set().union(*map(units, report))
    assert tuned and reported and not (tuned & reported)
    assert len({frozenset(units(f)) for f in report}) == 5  # the seeds still draw different sets
    # the pools split the units about evenly (a biased pool would skew both sides)
    share = unit_pool(np.arange(10_000)).mean()
    assert 0.47 < share < 0.53
