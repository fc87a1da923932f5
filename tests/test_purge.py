"""Purge: the store loses every deleted interaction (atomically, by revision), the unlearned run
stays loadable, the source run's checkpoint is no longer referenced, and the ledger secret is
handled like a key."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tru_dist.cli import main
from tru_dist.data.store import read_meta, read_store, revision, store_orphans, write_revision, write_store
from tru_dist.errors import ConfigError
from tru_dist.unlearn.keyhash import SECRET_ENV, SECRET_FILE_ENV, KeyedHasher, default_secret_path

REV2 = "revisions/2/interactions.parquet"


def _pairs(path) -> set[tuple[int, int]]:
    t = pq.read_table(path, columns=["user_id", "item_id"])
    return set(zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist(), strict=True))


@pytest.fixture()
def trained(tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["data", "synth", "--format", "store", "--out", str(store), "--users", "80", "--items", "50",
                 "--modalities", "image:8,text:4"]) == 0
    assert main(["train", "--model", "lightgcn", "--data", str(store), "--out", str(run), "--train.epochs=2",
                 "--model.dim=8"]) == 0
    data = read_store(store)
    train = np.flatnonzero(data.labels == 0)
    users = [3, 17]  # two users deleted wholly, plus two single pairs of other users
    pairs = [(int(data.users[k]), int(data.items[k])) for k in train if data.users[k] not in users][::97][:2]
    req = tmp_path / "req.csv"
    pd.DataFrame({"request_id": ["u3", "u17", "p1", "p2"], "user_id": users + [p[0] for p in pairs],
                  "item_id": pd.array([None, None] + [p[1] for p in pairs], dtype="Int64"),
                  "reason": "gdpr"}).to_csv(req, index=False)
    all_pairs = zip(data.users.tolist(), data.items.tolist(), strict=True)
    deleted = {p for p in all_pairs if p[0] in users} | set(pairs)
    capsys.readouterr()
    return store, run, req, deleted


def test_unlearn_purge_rewrites_the_store_and_unlinks_the_source(tmp_path, trained, capsys):
    store, run, req, deleted = trained
    before = _pairs(store / "interactions.parquet")
    assert deleted <= before
    out = tmp_path / "out"
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out), "--purge",
                 "--unlearn.epochs=1"]) == 0
    meta = read_meta(store)
    assert meta["revision"] == 2 and meta["interactions_file"] == REV2
    assert not (store / "interactions.parquet").exists() and meta["retained"] == []  # default: none kept
    after = _pairs(store / meta["interactions_file"])
    assert after == before - deleted and not any(u in (3, 17) for u, _ in after)
    assert store_orphans(store) == []

    receipt = json.loads((out / "ledger.jsonl").read_text())
    purge = receipt["purge"][0]
    assert purge["status"] == "done" and purge["revision_before"] == 1 and purge["revision"] == 2
    assert purge["removed_rows"] == len(deleted) == receipt["removed"]["interactions"]
    assert purge["users_emptied"] == 2 and purge["keep_versions"] == 0
    assert receipt["hashes"]["deleted_users"] == 2 and receipt["hashes"]["pairs"] == len(deleted)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "source_run" not in metrics and metrics["source_model"] == receipt["model_before"]
    assert str(run) not in (out / "metrics.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "ledger.jsonl",
                                                     "ledger_hashes", "metrics.json"]

    # the unlearned run loads with the purged store; the source run, trained on the deleted data, does not
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 0
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "trained on deleted data" in capsys.readouterr().err

    # the same command again: a replay, the store untouched
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out), "--purge"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] is True
    assert read_meta(store)["revision"] == 2 and len((out / "ledger.jsonl").read_text().splitlines()) == 1

    # a new request naming a purged pair is reported as an overlap, the rest applied
    data = read_store(store)
    k = int(np.flatnonzero(data.labels == 0)[5])
    gone = sorted(deleted - {p for p in deleted if p[0] in (3, 17)})[0]
    req2 = tmp_path / "req2.csv"
    pd.DataFrame({"request_id": ["again", "new"], "user_id": [gone[0], int(data.users[k])],
                  "item_id": [gone[1], int(data.items[k])], "reason": "x"}).to_csv(req2, index=False)
    assert main(["unlearn", "--run", str(out), "--requests", str(req2), "--out", str(tmp_path / "out2"),
                 "--purge", "--keep-versions", "1", "--unlearn.epochs=1"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["overlaps"][0]["purged"] is True and second["forget_set"]["n_deleted"] == 1
    assert second["overlaps"][0]["request_ids"] == ["again"]  # answered by the earlier purge
    meta = read_meta(store)
    assert meta["revision"] == 3 and [r["file"] for r in meta["retained"]] == [REV2]
    assert second["receipt"]["purge"][0]["retained"] == [REV2]
    assert (int(data.users[k]), int(data.items[k])) not in _pairs(store / meta["interactions_file"])
    # ... and that command again is a replay: "again" was answered by the purge, not left as new
    # (it was refused: "already applied ...; resubmit only the new ones: again")
    assert main(["unlearn", "--run", str(out), "--requests", str(req2), "--out", str(tmp_path / "out2"),
                 "--purge", "--keep-versions", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] is True and read_meta(store)["revision"] == 3
    # ... but with another retention it is refused, the kept revision left (it pruned it silently)
    ledger_before = (tmp_path / "out2" / "ledger.jsonl").read_text()
    for keep in ("0", "3"):
        assert main(["unlearn", "--run", str(out), "--requests", str(req2), "--out", str(tmp_path / "out2"),
                     "--purge", "--keep-versions", keep]) != 0
        err = capsys.readouterr().err
        assert f"purged with --keep-versions 1; replaying it with --keep-versions {keep}" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [r["file"] for r in read_meta(store)["retained"]] == [REV2]
    assert (store / "revisions" / "2").exists()
    assert (tmp_path / "out2" / "ledger.jsonl").read_text() == ledger_before
    # the FIRST batch's own command again (purged with retention 0): a replay, and its purge is
    # not run again — that applied retention 0 to the store and pruned what batch 2 kept
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out), "--purge"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] is True
    assert [r["file"] for r in read_meta(store)["retained"]] == [REV2] and (store / REV2).exists()

    # retention 0 on a standalone purge deletes the retained version; every receipt records it
    assert main(["data", "purge", "--data", str(store), "--ledger", str(tmp_path / "out2")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["removed_rows"] == 0 and summary["superseded_removed"] == [REV2]
    assert not (store / "revisions" / "2").exists() and read_meta(store)["retained"] == []
    receipts = [json.loads(x) for x in (tmp_path / "out2" / "ledger.jsonl").read_text().splitlines()]
    assert len(receipts) == 2 and all(r["purge"][0]["status"] == "done" for r in receipts)


def test_a_replay_after_the_store_moved_does_not_purge_it_again(tmp_path, capsys, monkeypatch):
    """A run trained on a relative store path, its project folder then moved: the replay reaches
    the same store at another absolute path. The receipt's purge entry was found by that path
    only, so the replay purged again with the retention given now and pruned the revision a later
    batch kept. The store's content hash recorded with the purge finds it wherever it now is."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    assert main(["data", "synth", "--format", "store", "--out", "store", "--users", "80", "--items", "50",
                 "--modalities", "image:8"]) == 0
    assert main(["train", "--model", "lightgcn", "--data", "store", "--out", "run", "--train.epochs=1",
                 "--model.dim=8"]) == 0
    for name, user in (("req1.csv", 3), ("req2.csv", 17)):
        pd.DataFrame({"request_id": [f"u{user}"], "user_id": [user],
                      "item_id": pd.array([None], dtype="Int64"), "reason": "gdpr"}).to_csv(name, index=False)
    assert main(["unlearn", "--run", "run", "--requests", "req1.csv", "--out", "out", "--purge",
                 "--unlearn.epochs=1"]) == 0
    assert main(["unlearn", "--run", "out", "--requests", "req2.csv", "--out", "out2", "--purge",
                 "--keep-versions", "1", "--unlearn.epochs=1"]) == 0  # keeps batch 1's revision
    meta = read_meta(project / "store")
    assert meta["revision"] == 3 and [r["file"] for r in meta["retained"]] == [REV2]
    ledger = (project / "out" / "ledger.jsonl").read_text()

    moved = tmp_path / "moved"
    project.rename(moved)
    monkeypatch.chdir(moved)
    capsys.readouterr()
    # batch 1's own command again (purged with retention 0): a replay, its purge not run again
    assert main(["unlearn", "--run", "run", "--requests", "req1.csv", "--out", "out", "--purge"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] is True
    assert read_meta(moved / "store") == meta and (moved / "store" / REV2).exists()
    assert (moved / "out" / "ledger.jsonl").read_text() == ledger
    # ... and a replay with another retention is refused as it is where the store was purged
    assert main(["unlearn", "--run", "run", "--requests", "req1.csv", "--out", "out", "--purge",
                 "--keep-versions", "1"]) == 2
    assert "purged with --keep-versions 0; replaying it with --keep-versions 1" in capsys.readouterr().err
    assert read_meta(moved / "store") == meta and (moved / "out" / "ledger.jsonl").read_text() == ledger


def test_an_edited_receipt_stops_purge_and_unlearn_before_they_write(tmp_path, trained, capsys):
    """A count edited inside a sealed receipt: ``data purge`` rewrote the store and only then
    refused to re-seal the receipt (leaving the purge unrecorded); ``unlearn`` built on the
    edited ledger. Both now stop first, in one line, with the store and the run untouched; and
    ``evaluate``/``recommend`` refuse to serve the run."""
    store, run, req, _ = trained
    out = tmp_path / "out"
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out),
                 "--unlearn.epochs=1"]) == 0
    receipt = json.loads((out / "ledger.jsonl").read_text())
    receipt["removed"]["interactions"] += 5
    (out / "ledger.jsonl").write_text(json.dumps(receipt, sort_keys=True) + "\n")
    store_before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    capsys.readouterr()
    assert main(["data", "purge", "--data", str(store), "--ledger", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "its content does not match its seal" in err and "purging the store was refused before it" in err
    assert len(err.splitlines()) == 1, err
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == store_before  # no revision, no pruning
    k = int(np.flatnonzero(read_store(store).labels == 0)[7])
    req2 = tmp_path / "req2.csv"
    pd.DataFrame({"request_id": ["n1"], "user_id": [int(read_store(store).users[k])],
                  "item_id": [int(read_store(store).items[k])], "reason": "x"}).to_csv(req2, index=False)
    for target in (out, tmp_path / "out3"):
        assert main(["unlearn", "--run", str(out), "--requests", str(req2), "--out", str(target),
                     "--unlearn.epochs=1"]) != 0
        err = capsys.readouterr().err.strip()
        assert "this unlearn was refused before it changed anything" in err, err
        assert len(err.splitlines()) == 1, err
    assert len((out / "ledger.jsonl").read_text().splitlines()) == 1 and not (tmp_path / "out3").exists()
    # serving it: the served graph leaves out what the receipts name, and an edit can change that
    for command in (["evaluate", "--run", str(out)], ["recommend", "--run", str(out), "--users", "1"]):
        assert main(command) != 0
        err = capsys.readouterr().err.strip()
        assert "does not match its seal" in err and "; serving the run was refused: restore" in err
        assert len(err.splitlines()) == 1, err


def test_a_stripped_seal_is_refused_where_the_ledger_is_used(tmp_path, trained, capsys):
    """Every seal stripped (and the receipt edited): without the checkpoint's ``sealed_receipts``
    this read as an old unsealed ledger, so evaluate, purge and audit went ahead on the edit.
    And an edited OUT ledger is refused before an interrupted in-place unlearn in OUT is
    settled by it (its staged model was deleted or promoted by the unchecked receipt)."""
    store, run, req, _ = trained
    out = tmp_path / "out"
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out),
                 "--unlearn.epochs=1"]) == 0
    receipt = json.loads((out / "ledger.jsonl").read_text())
    assert receipt["seal"] and _sealed_receipts(out) == [receipt["receipt_id"]]
    stripped = {k: v for k, v in receipt.items() if k != "seal"}
    stripped["removed"]["interactions"] = 0
    (out / "ledger.jsonl").write_text(json.dumps(stripped, sort_keys=True) + "\n")
    capsys.readouterr()
    for command, doing in ((["evaluate", "--run", str(out)], "serving the run was refused"),
                           (["data", "purge", "--data", str(store), "--ledger", str(out)],
                            "purging the store was refused before it changed anything"),
                           (["audit", "--run", str(out), "--requests", str(req)],
                            "auditing the run was refused")):
        assert main(command) != 0, command
        err = capsys.readouterr().err.strip()
        assert "its seal was removed (the run's checkpoint records it as sealed)" in err and doing in err, err
        assert len(err.splitlines()) == 1, err
    assert not (out / "audit.json").exists() and read_meta(store).get("revision", 1) == 1

    # OUT holds an in-place unlearn killed after its receipt (checkpoint.staged.pt) and an edited ledger
    (out / "ledger.jsonl").write_text(json.dumps({**receipt, "model_after": "0" * 64}, sort_keys=True) + "\n")
    (out / "checkpoint.staged.pt").write_bytes((out / "checkpoint.pt").read_bytes())
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "its content does not match its seal" in err and "this unlearn was refused before" in err, err
    assert (out / "checkpoint.staged.pt").exists()  # left as it was for the ledger to be restored


def _sealed_receipts(run) -> list[str]:
    import torch

    return torch.load(run / "checkpoint.pt", weights_only=True)["sealed_receipts"]


def test_revisions_are_atomic_and_orphans_are_found(tmp_path, tiny_data):
    store = write_store(tiny_data, tmp_path / "s")
    keep = np.ones(tiny_data.n_interactions, dtype=bool)
    keep[[0, 5, 9]] = False
    write_revision(store, keep, record={"receipts": ["x"]})
    data = read_store(store)  # verify=True: the new content hash is consistent
    assert data.n_interactions == tiny_data.n_interactions - 3
    assert np.array_equal(data.users, tiny_data.users[keep])
    assert np.array_equal(data.items, tiny_data.items[keep])
    # what a killed purge leaves: an unreferenced revision and a temp file; readers ignore both
    (store / "revisions" / "3").mkdir()
    (store / "revisions" / "3" / "interactions.parquet").write_bytes(b"half")
    (store / ".META.json.abc.tmp").write_text("{")
    assert [p.name for p in store_orphans(store)] == [".META.json.abc.tmp", "interactions.parquet"]
    assert read_store(store).n_interactions == data.n_interactions


def test_a_done_purge_is_found_by_the_content_the_store_held_and_only_by_it(tmp_path, tiny_data):
    """A receipt's purge entry names a path the store may have left; what identifies it is the
    (revision, content hash) the purge left, which the store's META keeps in its history after
    later purges. A store that never held that content is not taken as purged, and an entry
    recorded before content hashes were is found by its path only."""
    from tru_dist.unlearn.purge import done_purge

    store = write_store(tiny_data, tmp_path / "s")
    keep = np.ones(tiny_data.n_interactions, dtype=bool)
    keep[[0, 5]] = False
    meta = write_revision(store, keep, record={"receipts": ["r"]})
    entry = {"status": "done", "store": str(tmp_path / "gone"), "revision": 2,
             "content_hash": meta["content_hash"], "keep_versions": 0}
    assert done_purge({"receipt_id": "r", "purge": [entry]}, store) == entry
    keep = np.ones(meta["n_interactions"], dtype=bool)
    keep[3] = False
    write_revision(store, keep, record={"receipts": ["r", "r2"]})  # a later batch's purge
    assert done_purge({"receipt_id": "r", "purge": [entry]}, store) == entry
    other = write_store(tiny_data, tmp_path / "o")  # the same rows, never purged
    assert done_purge({"receipt_id": "r", "purge": [entry]}, other) is None
    pending = {**entry, "status": "pending"}
    assert done_purge({"receipt_id": "r", "purge": [pending]}, store) is None
    legacy = {k: v for k, v in entry.items() if k != "content_hash"}
    assert done_purge({"receipt_id": "r", "purge": [legacy]}, store) is None
    here = {**legacy, "store": str(store.resolve())}
    assert done_purge({"receipt_id": "r", "purge": [here]}, store) == here


def test_the_ledger_secret_is_created_private_and_refused_when_exposed(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = default_secret_path()
    assert path == tmp_path / "cfg" / "tru-dist" / "ledger-secret" and not path.exists()
    first = KeyedHasher()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().strip()) == 64
    assert KeyedHasher().key_id == first.key_id  # reused, not regenerated
    other = KeyedHasher(b"x" * 32)
    assert first.pairs(np.array([1]), np.array([2]))[0] != other.pairs(np.array([1]), np.array([2]))[0]
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others.*chmod 600"):
        KeyedHasher()
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        KeyedHasher()
    own = tmp_path / "mine"
    own.write_text("my-own-deployment-secret-value\n")
    own.chmod(0o600)
    monkeypatch.delenv(SECRET_ENV)
    monkeypatch.setenv(SECRET_FILE_ENV, str(own))
    assert KeyedHasher().key_id == KeyedHasher(b"my-own-deployment-secret-value").key_id


def test_a_ledger_is_refused_on_a_store_its_run_was_not_trained_on(tmp_path, trained, capsys):
    """Receipts hash (user id, item id) pairs, and another store's rows with the same ids match
    them: purging that store with this ledger deleted its rows without a word. Refused, before
    anything is written; the run's own store still purges."""
    store, run, req, deleted = trained
    out = tmp_path / "out"
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out),
                 "--unlearn.epochs=1"]) == 0
    other = tmp_path / "other"
    assert main(["data", "synth", "--format", "store", "--out", str(other), "--users", "80", "--items", "50",
                 "--modalities", "image:8,text:4", "--seed", "5"]) == 0
    capsys.readouterr()
    shared = _pairs(other / "interactions.parquet") & deleted
    assert shared  # ids alone match: without the check these rows of `other` would go
    assert main(["data", "purge", "--data", str(other), "--ledger", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"pass --data {store}" in err[0]
    assert revision(read_meta(other)) == 1 and shared <= _pairs(other / "interactions.parquet")

    tiny_run = tmp_path / "tiny-run"
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(tiny_run),
                 "--train.epochs=1", "--model.dim=8"]) == 0
    tiny_req = tmp_path / "tiny.csv"
    pd.DataFrame({"request_id": ["t"], "user_id": [3], "item_id": pd.array([None], dtype="Int64"),
                  "reason": "x"}).to_csv(tiny_req, index=False)
    assert main(["unlearn", "--run", str(tiny_run), "--requests", str(tiny_req), "--out",
                 str(tmp_path / "tiny-out"), "--unlearn.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["data", "purge", "--data", str(store), "--ledger", str(tmp_path / "tiny-out")]) == 2
    assert "trained on 'synthetic:tiny'" in capsys.readouterr().err
    assert revision(read_meta(store)) == 1

    assert main(["data", "purge", "--data", str(store), "--ledger", str(out)]) == 0  # its own store
    assert deleted.isdisjoint(_pairs(store / read_meta(store)["interactions_file"]))
