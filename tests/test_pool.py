"""A worker pool (W = 2 ranks started once, tru_dist/distributed/pool.py) computes bit for bit what
fresh process groups compute, task after task; its failures are one-line errors, never a hang.

The reference everywhere is today's path: ``dist.address=none`` with no pool, where every call
spawns a fresh group (``spawn_local``). Requests are chained as two separate ``tru-dist unlearn``
calls chain them (the second on the first's output), on MGCN so that the per-process kNN cache
and the unlearning engine's seeded streams (reverse_bpr: TRU's loop with its switches off; TRU's
line search undoes every epoch on this tiny graph, leaving nothing to compare) are exercised
across tasks.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

import tru_dist
from tru_dist.config import build_config
from tru_dist.distributed import commands
from tru_dist.distributed.launch import run_distributed
from tru_dist.distributed.pool import PoolTaskError, WorkerPool, WorkerPoolError
from tru_dist.errors import ConfigError

W2 = ["dist.workers=2", "dist.address=none"]
METHOD = "reverse_bpr"


def _cfg(**extra):
    over = {"model": {"name": "mgcn", "dim": 16, "n_layers": 2}, "data": {"path": "synthetic:tiny"},
            "train": {"epochs": 2, "batch_size": 400, "progress": "off"}, "eval": {"ks": [10, 20]},
            "unlearn": {"epochs": 2, "batch_size": 64, "gate": {"max_epochs": 3}}}
    for k, v in extra.items():
        over.setdefault(k, {}).update(v)
    return build_config(overrides=over)


def _same(a: dict, b: dict) -> None:
    """Two unlearn results are the same computation: equal metrics, decisions and receipts."""
    for key in ("before", "valid", "test", "forget", "forget_set", "overlaps"):
        assert a[key] == b[key], key
    strip = lambda d: {k: v for k, v in d.items() if not k.endswith("seconds")}  # noqa: E731
    assert strip(a["decisions"]) == strip(b["decisions"])
    for key in ("receipt_id", "request_ids", "removed", "model_before", "model_after"):
        assert a["receipt"][key] == b["receipt"][key], key


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_data):
    """An original (W = 1), two disjoint interaction-request files, and the reference chain: each
    request on a fresh W = 2 group, the second applied to the first's output."""
    from tru_dist.data.regimes import select_forget
    from tru_dist.data.requests import write_requests

    tmp = tmp_path_factory.mktemp("pool")
    commands.train(_cfg(), tmp / "run")
    table = select_forget(tiny_data, "interactions", 0.06, seed=0)
    files = [tmp / "a.csv", tmp / "b.csv"]
    write_requests(table.iloc[: len(table) // 2], files[0])
    write_requests(table.iloc[len(table) // 2 :], files[1])
    fresh = [commands.unlearn(tmp / "run", files[0], tmp / "fresh1", method=METHOD, overrides=W2)]
    fresh.append(commands.unlearn(tmp / "fresh1", files[1], tmp / "fresh2", method=METHOD, overrides=W2))
    assert fresh[0]["world_size"] == 2
    for f in fresh:  # each update moved the model, so equal hashes below mean equal updates
        assert f["receipt"]["model_before"] != f["receipt"]["model_after"]
    return tmp, files, fresh


@pytest.fixture(scope="module")
def pool():
    with tru_dist.worker_pool(2) as p:
        yield p


def _rank_and_group(rank: int, world: int) -> tuple[int, int, int, int]:
    import torch.distributed as dist

    return rank, world, dist.get_rank(), os.getpid()


def test_tasks_on_one_pool_equal_fresh_groups_task_after_task(chain, pool, tiny_data):
    """Two chained requests, then two trainings (in-memory data) with different seeds: every
    result equals the fresh group's bit for bit, and the ranks are the same processes throughout
    (the group was initialised once)."""
    tmp, files, fresh = chain
    before = pool.call(_rank_and_group)
    assert [r[:3] for r in before] == [(0, 2, 0), (1, 2, 1)]
    first = tru_dist.unlearn(tmp / "run", files[0], method=METHOD, out=tmp / "pool1", config=W2, pool=pool)
    second = tru_dist.unlearn(first, files[1], method=METHOD, out=tmp / "pool2", pool=pool)  # W: the pool's
    _same(first.metrics, fresh[0])
    _same(second.metrics, fresh[1])
    names = {d: sorted(p.name for p in (tmp / d).iterdir()) for d in ("pool2", "fresh2")}
    assert names["pool2"] == names["fresh2"]

    other = _cfg(train={"seed": 7})
    trained = {seed: commands.train(_cfg(train={"seed": seed}, dist={"workers": 2, "address": "none"}),
                                    tmp / f"train-pool-{seed}", data=tiny_data, pool=pool) for seed in (0, 7)}
    other.dist.workers, other.dist.address = 2, "none"
    reference = commands.train(other, tmp / "train-fresh-7", data=tiny_data)
    assert trained[0]["test"] != trained[7]["test"]  # so a stale first task would show
    assert trained[7]["test"] == reference["test"] and trained[7]["valid"] == reference["valid"]
    assert [h["loss"] for h in trained[7]["history"]] == [h["loss"] for h in reference["history"]]
    assert [r[3] for r in pool.call(_rank_and_group)] == [r[3] for r in before]
    assert pool.tasks_run == 6


def test_the_cli_applies_several_request_files_on_one_pool_as_separate_calls_would(chain, capsys):
    """``--requests A --requests B`` at W = 2: OUT/1-a then OUT/2-b, the second on the first's
    model — the same receipts and models as two separate calls; a second run replays both."""
    from tru_dist.cli import main

    tmp, files, fresh = chain
    argv = ["unlearn", "--run", str(tmp / "run"), "--requests", str(files[0]), "--requests", str(files[1]),
            "--method", METHOD, "--out", str(tmp / "cli"), "--workers", "2", "--address", "none"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["out"] for p in printed] == [str(tmp / "cli" / "1-a"), str(tmp / "cli" / "2-b")]
    for got, want in zip(printed, fresh, strict=True):
        assert got["receipt"]["model_after"] == want["receipt"]["model_after"]
        assert got["test"] == want["test"] and got["replayed"] is False
    ledger = [json.loads(line)["receipt_id"] for line in (tmp / "cli" / "2-b" / "ledger.jsonl").open()]
    assert ledger == [f["receipt"]["receipt_id"] for f in fresh]  # the chain's ledger, as separate calls
    assert main(argv) == 0  # again: both replayed from their ledgers, no worker started
    assert [p["replayed"] for p in json.loads(capsys.readouterr().out)] == [True, True]


def test_a_failing_request_file_keeps_the_ones_before_it(chain, capsys):
    """The second file names a user the data does not have: a one-line error naming it; the first
    file's complete output stays, the second's folder is removed. Bad sets of files (one given
    twice, one missing, rows an earlier file deletes) are refused before any work."""
    from tru_dist.cli import main
    from tru_dist.data.requests import read_requests, write_requests

    tmp, files, _ = chain
    first = read_requests(files[0])
    unknown = first.head(1).assign(request_id="unknown-user", user_id=10**6, item_id=pd.NA)
    write_requests(unknown, tmp / "unknown.csv")
    out = tmp / "partial"
    assert main(["unlearn", "--run", str(tmp / "run"), "--requests", str(files[0]), "--requests",
                 str(tmp / "unknown.csv"), "--method", "noop", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "request file 2 of 2" in err and "1000000" in err, err
    assert (out / "1-a" / "checkpoint.pt").exists() and not (out / "2-unknown").exists()
    again = first.assign(request_id=lambda t: "again-" + t["request_id"])
    write_requests(again, tmp / "again.csv")
    for extra, expected in (([str(files[0])], "given twice"), ([str(tmp / "nope.csv")], "nope.csv"),
                            ([str(tmp / "again.csv")], "deletes already")):
        argv = ["unlearn", "--run", str(tmp / "run"), "--requests", str(files[0]), "--out", str(tmp / "x")]
        assert main(argv + [f"--requests={e}" for e in extra]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1
    assert not (tmp / "x").exists()


def test_a_user_error_is_one_line_and_the_pool_goes_on(chain, pool):
    tmp, _, _ = chain
    bad = _cfg(dist={"workers": 2, "address": "none"}).to_dict()
    with pytest.raises(ConfigError, match="evaluate needs model_dir"):  # raised by both ranks
        pool.run({"kind": "evaluate", "config": bad})
    with pytest.raises(ConfigError, match="the worker pool has 2 workers"):
        run_distributed("evaluate", _cfg(dist={"workers": 3, "address": "none"}), pool=pool)
    with pytest.raises(ConfigError, match="dist.address=local"):
        run_distributed("evaluate", _cfg(dist={"workers": 2}), pool=pool)
    assert tru_dist.evaluate(tmp / "fresh1", pool=pool) == commands.evaluate(tmp / "fresh1", overrides=W2)


def _raise_bug(rank: int, world: int) -> None:
    raise ValueError(f"a bug on rank {rank}")


def _die_on_rank1(rank: int, world: int) -> None:
    import torch.distributed as dist

    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()  # rank 0 waits for a peer that is gone (the group's timeout is minutes)


def test_a_bug_surfaces_with_its_traceback_and_the_pool_refuses_after():
    pool = WorkerPool(2)
    with pytest.raises(PoolTaskError, match="rank 0 failed: ValueError: a bug on rank 0") as info:
        pool.call(_raise_bug)
    assert "Traceback" in str(info.value)
    with pytest.raises(WorkerPoolError, match="closed: rank 0 failed"):
        pool.call(_rank_and_group)
    pool.close()


def _bug_on_rank1(rank: int, world: int) -> None:
    import torch.distributed as dist

    if rank == 1:
        raise ValueError("a bug on rank 1 only")
    dist.barrier()  # rank 0 waits for rank 1, which never comes (the group's timeout is minutes)


def test_a_one_sided_bug_fails_the_call_without_waiting_out_the_group_timeout():
    """Rank 1's bug leaves rank 0 in a collective for the group's timeout (300 s here): the pool
    is broken anyway, so the call gives rank 0 only FAIL_GRACE_S to answer, then stops it."""
    from tru_dist.distributed.pool import FAIL_GRACE_S

    pool = WorkerPool(2, collective_timeout_s=300)
    start = time.monotonic()
    with pytest.raises(PoolTaskError, match="rank 1 failed: ValueError: a bug on rank 1 only"):
        pool.call(_bug_on_rank1)
    assert time.monotonic() - start < FAIL_GRACE_S + 30  # not the 300 s group timeout
    assert all(not p.is_alive() for p in pool._procs)  # the rank stuck in the barrier was stopped
    with pytest.raises(WorkerPoolError, match="closed: rank 1 failed"):
        pool.call(_rank_and_group)
    pool.close()


def _user_error_on_rank0(rank: int, world: int) -> None:
    import torch.distributed as dist

    if rank == 0:
        raise ConfigError("only rank 0 sees this bad setting; fix it")
    dist.barrier()  # rank 1 waits for rank 0, which never comes: the group's timeout ends it


def test_a_one_sided_user_error_is_still_that_error_and_closes_the_pool():
    """Rank 0's user error leaves rank 1 in a collective: after the group's timeout the caller gets
    rank 0's one-line error (the cause, not rank 1's timeout), and the pool is closed."""
    pool = WorkerPool(2, collective_timeout_s=2)
    with pytest.raises(ConfigError, match="only rank 0 sees this bad setting"):
        pool.call(_user_error_on_rank0)
    with pytest.raises(WorkerPoolError, match="closed: rank 1 failed"):
        pool.call(_rank_and_group)
    pool.close()


def test_a_killed_rank_is_a_clear_error_not_a_hang():
    pool = WorkerPool(2)
    start = time.monotonic()
    with pytest.raises(WorkerPoolError, match=r"rank 1 \(pid \d+\) died while running _die_on_rank1 "
                                              r"\(killed by SIGKILL\)"):
        pool.call(_die_on_rank1)
    assert time.monotonic() - start < 30
    with pytest.raises(WorkerPoolError, match="open a new one"):
        pool.call(_rank_and_group)
    assert all(not p.is_alive() for p in pool._procs)  # the survivor was stopped too

    idle = WorkerPool(2)
    os.kill(idle.pids[1], signal.SIGKILL)
    idle._procs[1].join(10)  # the kill has landed
    with pytest.raises(WorkerPoolError, match=r"rank 1 \(pid \d+\) died while idle \(killed by SIGKILL\)"):
        idle.call(_rank_and_group)
    idle.close()
    idle.close()


def test_close_is_idempotent_and_the_ranks_leave_cleanly(pool):
    """Last in this module: closes the shared pool (whose fixture closes it again, idempotently)."""
    assert [r[2] for r in pool.call(_rank_and_group)] == [0, 1]
    pool.close()
    assert pool.closed and all(p.exitcode == 0 for p in pool._procs)  # destroy(), then os._exit(0)
    pool.close()
    with pytest.raises(WorkerPoolError, match="closed"):
        pool.call(_rank_and_group)
    with pytest.raises(ConfigError, match="2 or more workers"):
        WorkerPool(1)


def test_bench_pool_reports_both_chains_and_finds_them_identical(tmp_path):
    """``tru-dist bench pool`` end to end (2 ranks, 2 single-user requests): both chains are
    timed per request and, as the pool must, end in bit-identical models and receipts."""
    from tru_dist.cli import main

    out = tmp_path / "pool.json"
    code = main(["bench", "pool", "--data", "synthetic:tiny", "--model", "lightgcn", "--workers", "2",
                 "--requests", "2", "--method", "reverse_bpr", "--epochs", "2",
                 "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["identical"] is True and report["receipts_identical"] is True
    assert report["digest"]["fresh"] == report["digest"]["pool"]
    for chain_name in ("fresh", "pool"):
        chain = report[chain_name]
        assert len(chain["per_request"]) == 2 and chain["p50"] > 0
    assert report["pool"]["start_seconds"] > 0 and report["ratio_p50"] > 0


def test_bench_pool_refuses_a_run_folder_as_its_work_dir(tmp_path, capsys):
    """It wrote its stores and chains into a run folder without a word."""
    from tru_dist.cli import main

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert main(["bench", "pool", "--data", "synthetic:tiny", "--work-dir", str(tmp_path)]) == 2
    assert "--work-dir" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [tmp_path / "checkpoint.pt"]
