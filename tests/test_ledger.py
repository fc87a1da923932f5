"""The deletion ledger: applied once, replay is a no-op, overlaps reported, receipts durable."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from tru_dist.config import Config
from tru_dist.data.requests import resolve_requests, write_requests
from tru_dist.errors import RequestError
from tru_dist.graph.context import build_rec_graph
from tru_dist.models.registry import build_model
from tru_dist.unlearn.keyhash import KeyedHasher
from tru_dist.unlearn.ledger import (
    DeletionLedger,
    apply_deletion,
    canonical_receipt,
    deleted_rows,
    model_version,
    seal_breaks,
    seal_problem,
)


def _requests(rows: list[tuple[str, int, int | None]]) -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": [r[0] for r in rows],
        "user_id": [r[1] for r in rows],
        "item_id": pd.array([r[2] for r in rows], dtype="Int64"),
        "reason": ["test"] * len(rows),
    })


@pytest.fixture()
def setup(tiny_data):
    data = replace(tiny_data, meta={**tiny_data.meta, "content_hash": "abc"})  # as a loaded store has
    graph = build_rec_graph(data, with_knn=False)
    train = np.flatnonzero(data.labels == 0)
    u0, i0 = int(data.users[train[0]]), int(data.items[train[0]])
    u1, i1 = int(data.users[train[-1]]), int(data.items[train[-1]])
    return data, graph, (u0, i0), (u1, i1)


def test_model_version_is_a_content_hash():
    cfg = Config()
    from tru_dist.data.synthetic import generate_synthetic

    g = build_rec_graph(generate_synthetic(30, 20, seed=1, modalities={}), with_knn=False)
    a, b = build_model(cfg.model, g, seed=0), build_model(cfg.model, g, seed=0)
    assert model_version(a) == model_version(b)  # same values, different objects
    with torch.no_grad():
        b.item_emb[3, 1] += 1e-6
    assert model_version(a) != model_version(b)


def test_apply_commit_replay_is_a_no_op(tmp_path, setup):
    data, graph, (u0, i0), _ = setup
    forget = resolve_requests(data, _requests([("r1", u0, i0)]))
    d1, g1 = apply_deletion(tmp_path, data, graph, forget)
    assert d1.n_interactions == data.n_interactions - 1
    assert "content_hash" not in d1.meta and d1.meta["parent_content_hash"] == "abc"
    assert g1.ui.n_edges == graph.ui.n_edges - 1
    assert torch.equal(g1.ui.dense(), graph.without_edges(np.array([u0]), np.array([i0])).ui.dense())

    ledger = DeletionLedger(tmp_path)
    plan = ledger.plan(data, forget)
    receipt = ledger.commit(plan, method="tru", model_before="h0", model_after="h1", seconds=0.5)
    assert receipt["removed"]["interactions"] == 1 and receipt["request_ids"] == ["r1"]
    assert [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()] == [receipt]

    # retry with the same request: the earlier receipt comes back, nothing new is deleted or written
    again = ledger.plan(data, forget)
    assert again.replay == receipt and len(again.forget.users) == 0
    assert ledger.commit(again, method="tru", model_before="x", model_after="y") == receipt
    assert len(ledger.receipts()) == 1
    d2, _ = apply_deletion(tmp_path, data, graph, forget)  # from the original data: same D_r
    assert d2.n_interactions == d1.n_interactions
    d3, g3 = apply_deletion(tmp_path, d1, g1, forget)  # from D_r itself: unchanged objects
    assert d3 is d1 and g3 is g1


def test_serving_reads_the_ledger_once_and_serves_what_it_checked(tmp_path, setup, monkeypatch):
    """served_state checks the seals of the receipts it read and removes those same receipts'
    pairs: one read of the ledger, so a ledger swapped in after the check is not served unchecked."""
    from tru_dist.unlearn.ledger import served_state

    data, graph, (u0, i0), _ = setup
    ledger = DeletionLedger(tmp_path)
    ledger.commit(ledger.plan(data, resolve_requests(data, _requests([("r1", u0, i0)]))),
                  method="tru", model_before="a", model_after="b")
    reads = []
    original_receipts = DeletionLedger.receipts
    monkeypatch.setattr(DeletionLedger, "receipts", lambda self: reads.append(1) or original_receipts(self))
    served, served_graph = served_state(tmp_path, data, graph)
    assert len(reads) == 1
    assert served.n_interactions == data.n_interactions - 1
    assert served_graph.ui.n_edges == graph.ui.n_edges - 1


def test_a_different_request_on_a_deleted_pair_is_reported(tmp_path, setup):
    data, graph, (u0, i0), (u1, i1) = setup
    ledger = DeletionLedger(tmp_path)
    first = resolve_requests(data, _requests([("r1", u0, i0)]))
    ledger.commit(ledger.plan(data, first), method="tru", model_before="a", model_after="b")
    second = resolve_requests(data, _requests([("r2", u0, i0), ("r3", u1, i1)]))
    plan = ledger.plan(data, second)
    assert plan.replay is None
    assert plan.overlaps == [{"receipt_id": ledger.receipts()[0]["receipt_id"], "earlier_requests": ["r1"],
                              "pairs": 1}]
    assert list(zip(plan.forget.users.tolist(), plan.forget.items.tolist(), strict=True)) == [(u1, i1)]
    d, _ = apply_deletion(tmp_path, data, graph, second)
    assert d.n_interactions == data.n_interactions - 2  # both pairs gone, the first only once
    receipt = ledger.commit(plan, method="tru", model_before="b", model_after="c")
    assert receipt["overlaps"][0]["pairs"] == 1 and receipt["removed"]["interactions"] == 1


def test_mixed_batch_and_tampering_are_refused(tmp_path, setup):
    data, _, (u0, i0), (u1, i1) = setup
    ledger = DeletionLedger(tmp_path)
    ledger.commit(ledger.plan(data, resolve_requests(data, _requests([("r1", u0, i0)]))),
                  method="tru", model_before="a", model_after="b")
    mixed = resolve_requests(data, _requests([("r1", u0, i0), ("r9", u1, i1)]))
    with pytest.raises(RequestError, match="already applied.*r9"):
        ledger.plan(data, mixed)
    hashes = tmp_path / ledger.receipts()[0]["hashes"]["file"]
    hashes.write_bytes(hashes.read_bytes()[:-8])  # truncated
    with pytest.raises(RequestError, match="does not match"):
        ledger.plan(data, resolve_requests(data, _requests([("r5", u1, i1)])))


def test_the_ledger_keeps_keyed_hashes_not_the_pairs(tmp_path, setup):
    """No file of the ledger holds a deleted id; the hashes alone find the pair again, and only
    under the same secret."""
    data, graph, (u0, i0), (u1, i1) = setup
    forget = resolve_requests(data, _requests([("r1", u0, i0)]))
    ledger = DeletionLedger(tmp_path, hasher=KeyedHasher(b"a-secret-of-sixteen-bytes"))
    receipt = ledger.commit(ledger.plan(data, forget), method="tru", model_before="a", model_after="b")
    assert receipt["hashes"]["pairs"] == 1 and receipt["hashes"]["algorithm"] == "HMAC-SHA256"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        f"{receipt['receipt_id']}.npz", "ledger.jsonl"]
    with np.load(tmp_path / receipt["hashes"]["file"]) as z:
        assert z["pairs"].dtype == np.uint8 and z["pairs"].shape == (1, 32)
    for f in tmp_path.rglob("*.*"):  # neither the ids as int64 nor as text
        body = f.read_bytes()
        assert np.array([u0, i0], dtype="<i8").tobytes() not in body
        # the wall-clock timestamp ("...T00:17:56Z") may spell "0:17" by chance: leave it out
        text = re.sub(rb'"timestamp": "[^"]*"', b"", body)
        assert f"{u0}:{i0}".encode() not in text and f"[{u0}, {i0}]".encode() not in text
    digests = ledger.digests_of(receipt)
    hit = deleted_rows(data.users, data.items, digests, ledger.hasher)
    assert hit.sum() == 1 and (data.users[hit][0], data.items[hit][0]) == (u0, i0)
    other = DeletionLedger(tmp_path, hasher=KeyedHasher(b"another-secret-of-16-bytes"))
    with pytest.raises(RequestError, match="hashed under ledger key .* set TRU_DIST_LEDGER_SECRET"):
        other.plan(data, resolve_requests(data, _requests([("r2", u1, i1)])))


def test_a_legacy_ledger_with_raw_pairs_is_read_and_migrated(tmp_path, setup):
    data, graph, (u0, i0), (u1, i1) = setup
    ledger = DeletionLedger(tmp_path)
    raw = np.array([[u0, i0]], dtype=np.int64)
    (tmp_path / "ledger_pairs").mkdir()
    np.save(tmp_path / "ledger_pairs" / "old.npy", raw)
    import hashlib

    raw_sha = hashlib.sha256((tmp_path / "ledger_pairs" / "old.npy").read_bytes()).hexdigest()
    receipt = {"receipt_id": "old", "request_ids": ["r1"], "pairs_file": "ledger_pairs/old.npy",
               "pairs_sha256": raw_sha}
    (tmp_path / "ledger.jsonl").write_text(json.dumps(receipt) + "\n")
    plan = ledger.plan(data, resolve_requests(data, _requests([("r2", u0, i0), ("r3", u1, i1)])))
    assert plan.overlaps[0]["pairs"] == 1 and len(plan.forget.users) == 1
    assert ledger.migrate_legacy() == 1
    assert not (tmp_path / "ledger_pairs").exists() and "pairs_file" not in ledger.receipts()[0]
    again = ledger.plan(data, resolve_requests(data, _requests([("r2", u0, i0), ("r3", u1, i1)])))
    assert again.overlaps == plan.overlaps


def test_receipts_are_sealed_and_an_edit_is_seen(tmp_path, setup):
    """The seal is HMAC-SHA256 under the deployment secret of the receipt's canonical JSON: it
    verifies after the receipt is read back (numpy counts, floats, a non-ASCII request id),
    fails for an edited count, and an update re-seals what the tool changed but refuses to
    rewrite (and so bless) an edited receipt. A receipt from before sealing stays unsealed."""
    import hashlib
    import hmac

    data, graph, (u0, i0), (u1, i1) = setup
    secret = b"s" * 32
    ledger = DeletionLedger(tmp_path, hasher=KeyedHasher(secret))
    plan = ledger.plan(data, resolve_requests(data, _requests([("rü1", u0, i0)])))
    receipt = ledger.commit(plan, method="tru", model_before="a", model_after="b", seconds=np.float32(0.1),
                            audit={"hit@20": np.float64(1 / 3), "n": np.int64(7)})
    seal = receipt["seal"]
    assert seal["algorithm"] == "HMAC-SHA256" and seal["key_id"] == ledger.hasher.key_id
    read_back = ledger.receipts()[0]
    body = json.dumps({k: v for k, v in read_back.items() if k != "seal"}, sort_keys=True,
                      separators=(",", ":")).encode()
    assert canonical_receipt(read_back) == body  # the seal covers exactly this
    assert seal["mac"] == hmac.new(secret, b"receipt:" + body, hashlib.sha256).hexdigest()  # by hand
    assert seal_problem(read_back, ledger.hasher) is None
    assert seal_breaks(ledger.receipts(), ledger.hasher) == ([], 0)
    assert seal_problem(read_back, KeyedHasher(b"t" * 32)).startswith("it was sealed under ledger key")

    edited = {**read_back, "removed": {**read_back["removed"], "interactions": 0}}
    assert "does not match its seal" in seal_problem(edited, ledger.hasher)
    (tmp_path / "ledger.jsonl").write_text(json.dumps(edited, sort_keys=True) + "\n")
    breaks, unsealed = seal_breaks(ledger.receipts(), ledger.hasher)
    assert unsealed == 0 and len(breaks) == 1 and "receipt 1 (" in breaks[0]
    with pytest.raises(RequestError, match="cannot be updated, its content does not match its seal"):
        ledger.update(read_back["receipt_id"], purge=[])
    assert json.loads((tmp_path / "ledger.jsonl").read_text()) == edited  # left as it was

    (tmp_path / "ledger.jsonl").write_text(json.dumps(read_back, sort_keys=True) + "\n")
    updated = ledger.update(read_back["receipt_id"], purge=[{"status": "done"}])
    assert updated["seal"]["mac"] != seal["mac"] and seal_problem(ledger.receipts()[0], ledger.hasher) is None
    # the seal is all that marks the edit: without it the same edit would pass
    stripped = {k: v for k, v in edited.items() if k != "seal"}
    assert seal_problem(stripped, ledger.hasher) is None
    assert seal_breaks([stripped], ledger.hasher) == ([], 1)
    assert "its seal was removed" in seal_breaks([stripped], ledger.hasher, [stripped["receipt_id"]])[0][0]
    (tmp_path / "ledger.jsonl").write_text(json.dumps(stripped, sort_keys=True) + "\n")
    assert "seal" not in ledger.update(stripped["receipt_id"], purge=[])  # not vouched for afterwards
    # a null seal is a damaged one, not "from before sealing" (it was re-sealed by update)
    nulled = {**edited, "seal": None}
    assert "its seal is damaged" in seal_problem(nulled, ledger.hasher)
    assert seal_breaks([nulled], ledger.hasher)[0] and seal_breaks([nulled], ledger.hasher)[1] == 0
    (tmp_path / "ledger.jsonl").write_text(json.dumps(nulled, sort_keys=True) + "\n")
    with pytest.raises(RequestError, match="cannot be updated, its seal is damaged"):
        ledger.update(nulled["receipt_id"], purge=[])
    # a receipt without a seal after a sealed one had it stripped, whatever the checkpoint says
    second = {**stripped, "receipt_id": "later"}
    breaks, unsealed = seal_breaks([read_back, second], ledger.hasher)
    assert unsealed == 1 and len(breaks) == 1
    assert "receipt 2 (later): its seal was removed (it follows" in breaks[0]
    assert seal_breaks([second, read_back], ledger.hasher) == ([], 1)  # older, then sealed: as written


def test_run_unlearn_twice_applies_once(tmp_path, tiny_data):
    from tru_dist.distributed.commands import unlearn
    from tru_dist.train.trainer import fit

    cfg = Config.from_dict({"model": {"name": "lightgcn", "dim": 16},
                            "train": {"epochs": 3, "eval_every": 3, "batch_size": 1024, "progress": "off"},
                            "eval": {"ks": [20]}, "unlearn": {"epochs": 2, "batch_size": 64}})
    fit(cfg, tiny_data, out_dir=tmp_path / "run")
    user = int(tiny_data.users[0])
    write_requests(_requests([("u-1", user, None)]), tmp_path / "req.csv")
    first = unlearn(tmp_path / "run", tmp_path / "req.csv", tmp_path / "out", method="tru", data=tiny_data)
    assert first["replayed"] is False and first["forget_set"]["n_removed_users"] == 1
    ckpt = (tmp_path / "out" / "checkpoint.pt").read_bytes()
    second = unlearn(tmp_path / "run", tmp_path / "req.csv", tmp_path / "out", method="tru", data=tiny_data)
    assert second["replayed"] is True and second["receipt"] == first["receipt"]
    assert (tmp_path / "out" / "checkpoint.pt").read_bytes() == ckpt
    assert len(DeletionLedger(tmp_path / "out").receipts()) == 1
    assert first["receipt"]["model_before"] != first["receipt"]["model_after"]


def test_a_request_file_rewritten_while_the_unlearn_runs_is_refused(tmp_path, tiny_data, monkeypatch):
    """The driver reads the request file, then the ranks read it again: a file rewritten in between
    had the model unlearn the new requests while the driver's checks vouched for the old ones (and
    the receipt recorded a third read). Each rank now checks it reads the driver's file; nothing is
    written when it does not."""
    import tru_dist.distributed.commands as commands
    from tru_dist.train.trainer import fit

    cfg = Config.from_dict({"model": {"name": "lightgcn", "dim": 16},
                            "train": {"epochs": 3, "eval_every": 3, "batch_size": 1024, "progress": "off"},
                            "eval": {"ks": [20]}, "unlearn": {"epochs": 2, "batch_size": 64}})
    fit(cfg, tiny_data, out_dir=tmp_path / "run")
    users = np.unique(tiny_data.users)
    write_requests(_requests([("u-1", int(users[0]), None)]), tmp_path / "req.csv")
    real = commands.run_distributed

    def rewritten_first(*args, **kwargs):  # another writer, between the driver's read and the ranks'
        write_requests(_requests([("u-1", int(users[1]), None)]), tmp_path / "req.csv")
        return real(*args, **kwargs)

    monkeypatch.setattr(commands, "run_distributed", rewritten_first)
    run, req, out = tmp_path / "run", tmp_path / "req.csv", tmp_path / "out"
    with pytest.raises(RequestError, match="req.csv changed after this unlearn began; nothing was written"):
        commands.unlearn(run, req, out, method="tru", data=tiny_data)
    assert not (out / "checkpoint.pt").exists() and not DeletionLedger(out).receipts()
    monkeypatch.setattr(commands, "run_distributed", real)  # left alone, the rewritten file is applied
    done = commands.unlearn(run, req, out, method="tru", data=tiny_data)
    assert done["receipt"]["request_ids"] == ["u-1"] and done["forget_set"]["n_removed_users"] == 1


def _rank_one_reads_another_file(rank, world, task):
    """A rewrite between the ranks' reads, as rank 1 sees it: another digest than the driver's."""
    from tru_dist.distributed.worker import worker_main

    return worker_main({**task, "requests_digest": "0" * 64} if rank == 1 else task)


def test_a_rank_that_reads_another_request_file_stops_every_rank_in_one_line(tmp_path, tiny_data):
    """When only one of W = 2 ranks finds the request file changed, every rank stops with a one-line
    error at once; the rank that raised alone waited 300 s in the group's teardown barrier while
    the other went on into the method's collectives, and ended in a traceback."""
    from tru_dist.distributed.process_group import spawn_local
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.run import prepare

    cfg = Config.from_dict({"model": {"name": "lightgcn", "dim": 16}, "data": {"path": "synthetic:tiny"},
                            "train": {"epochs": 3, "eval_every": 3, "batch_size": 1024, "progress": "off"},
                            "eval": {"ks": [20]}, "unlearn": {"epochs": 2, "batch_size": 64}})
    fit(cfg, tiny_data, out_dir=tmp_path / "run")
    write_requests(_requests([("u-1", int(np.unique(tiny_data.users)[0]), None)]), tmp_path / "req.csv")
    ready = prepare(tmp_path / "run", tmp_path / "req.csv", tmp_path / "out", method="tru",
                    overrides=["dist.workers=2"])
    task = {"kind": "unlearn", "config": ready.cfg.to_dict(), "model_dir": str(tmp_path / "run"),
            "requests": str(tmp_path / "req.csv"), "method": ready.method, "out_dir": str(tmp_path / "out"),
            "keep_versions": 0, "requests_digest": ready.requests_digest}
    with pytest.raises(RequestError, match="changed after this unlearn began; nothing was written"):
        spawn_local(_rank_one_reads_another_file, 2, (task,), backend="gloo", threads_per_rank=1)
    out = tmp_path / "out"
    assert not (out / "checkpoint.pt").exists() and not DeletionLedger(out).receipts()


def _rank_one_diverged(rank: int, world: int) -> str:
    """:func:`check_finite` at W = 2 where only rank 1's shard left a NaN; the TrainingError this
    rank raised, as text ("" when it raised none). A watchdog ends a rank still stuck in a
    collective (this one or the teardown barrier) after 20 s with exit code 3 — spawn then fails at
    once — instead of the group's 300 s gloo timeout; a rank that finishes exits before it fires."""
    import os
    import threading

    from tru_dist.errors import TrainingError
    from tru_dist.unlearn.run import check_finite

    watchdog = threading.Timer(20.0, os._exit, (3,))
    watchdog.daemon = True
    watchdog.start()
    model = torch.nn.Linear(3, 2)
    if rank == 1:
        with torch.no_grad():
            model.bias[1] = float("nan")
    try:
        check_finite(model, "tru")
    except TrainingError as exc:
        return str(exc)
    return ""


def test_a_diverged_update_on_one_rank_stops_every_rank_in_one_line():
    """At W = 2 only one shard's rows may diverge: that rank names the parameter, the other says
    another worker's shard did, and both stop at once. A rank that saw finite parameters and went
    on (no collective) left the other in the flag's all-reduce and itself in its next collective
    until the gloo timeout."""
    from tru_dist.distributed.process_group import spawn_local

    finite_rank, nan_rank = spawn_local(_rank_one_diverged, 2, backend="gloo", threads_per_rank=1)
    assert finite_rank.startswith("the tru update diverged: NaN/inf in another worker's shard; nothing was "
                                  "written"), finite_rank
    assert nan_rank.startswith("the tru update diverged: NaN/inf in bias; nothing was written"), nan_rank
