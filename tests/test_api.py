"""The Python API (tru_dist.api, lazily on the package) and the CLI commands built on it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import tru_dist
from tru_dist.cli import main
from tru_dist.config import Config
from tru_dist.errors import ConfigError, RequestError, TruDistError

REPO = Path(__file__).resolve().parent.parent
FAST = {"train.epochs": 3, "train.batch_size": 256, "train.progress": "off", "unlearn.epochs": 2}


def _run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_the_cli_parser_does_not_import_torch():
    """``tru-dist --version``/``--help`` and argument errors build the parser only: with torch
    imported on the way (the method registry's timing module did) they took ~2 s instead of ~0.07."""
    proc = _run_py("import sys; from tru_dist.cli import build_parser; build_parser(); "
                   "from tru_dist.unlearn import method_names; "
                   "print('torch' in sys.modules, len(method_names()))")
    assert proc.returncode == 0, proc.stderr
    torch_loaded, n_methods = proc.stdout.split()
    assert torch_loaded == "False" and int(n_methods) > 5


def test_import_is_light_and_exposes_the_api():
    proc = _run_py("import sys, tru_dist; print('torch' in sys.modules, sorted(tru_dist.__all__)); "
                   "import tru_dist.train.trainer; import tru_dist.unlearn.metrics as m; "
                   "print(callable(tru_dist.train), callable(tru_dist.unlearn), "
                   "callable(tru_dist.recommend))")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.startswith("False") and all(n in first for n in (
        "train", "load_run", "unlearn", "evaluate", "recommend", "export_embeddings"))
    assert second == "True True True"  # the subpackages train/unlearn stay callable after their import


def test_python_m_is_the_console_script(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"tru-dist {tru_dist.__version__}"
    proc = subprocess.run([sys.executable, "-m", "tru_dist", "--version"], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"tru-dist {tru_dist.__version__}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return tru_dist.train(data="synthetic:tiny", model="LightGCN", out=out, overrides=FAST, device="auto")


def test_train_writes_a_loadable_run_with_its_config(trained):
    assert trained.config.model.name == "lightgcn" and trained.config.train.device == "auto"
    saved = Config.from_dict(yaml.safe_load((trained.path / "config.yaml").read_text()))
    assert saved == trained.config and saved.train.lr == 1e-3  # the published LightGCN default
    again = tru_dist.load_run(trained.path)
    assert again.config == trained.config and again.metrics["best_epoch"] == trained.metrics["best_epoch"]
    with pytest.raises(ConfigError, match="does not exist"):
        tru_dist.load_run(trained.path.parent / "nope")


def test_a_damaged_checkpoint_is_refused_where_the_model_is_read(trained, tmp_path, capsys):
    """A run handle reads only the checkpoint's metadata (its tensors memory-mapped: an unlearn
    read a 1M-user source three times in full); what loads the model still refuses NaN weights
    in one line — evaluate, recommend and unlearn, through the API and the CLI."""
    import shutil

    run = tmp_path / "nan"
    shutil.copytree(trained.path, run)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    saved["best_model"]["user_emb"][2, 3] = float("nan")
    torch.save(saved, run / "checkpoint.pt")
    handle = tru_dist.load_run(run)  # metadata only: the handle opens
    assert handle.config == trained.config
    damaged = "holds NaN/inf parameters in user_emb: the model is damaged"
    with pytest.raises(TruDistError, match=damaged):
        tru_dist.evaluate(handle)
    with pytest.raises(TruDistError, match=damaged):
        tru_dist.recommend(run, users=[0])
    requests = pd.DataFrame({"request_id": ["r"], "user_id": [1], "item_id": pd.array([None], dtype="Int64"),
                             "reason": ["x"]})
    with pytest.raises(TruDistError, match=damaged):
        tru_dist.unlearn(run, requests, out=tmp_path / "u", overrides=FAST)
    assert not (tmp_path / "u" / "checkpoint.pt").exists()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) != 0
    err = capsys.readouterr().err.strip()
    assert damaged in err and len(err.splitlines()) == 1, err
    # a checkpoint in torch's legacy (non-zip) format cannot be memory-mapped: read whole instead
    saved["best_model"]["user_emb"][2, 3] = 0.0
    torch.save(saved, run / "checkpoint.pt", _use_new_zipfile_serialization=False)
    assert tru_dist.load_run(run).config == trained.config and "test" in tru_dist.evaluate(run)


def test_evaluate_reproduces_the_training_metrics(trained):
    ev = tru_dist.evaluate(trained)
    for split in ("valid", "test"):
        for k, v in trained.metrics[split].items():
            assert ev[split][k] == pytest.approx(v, abs=1e-9), (split, k)


def test_recommend_ranks_unseen_items_by_score(trained):
    from tru_dist.data.dataset import TRAIN
    from tru_dist.train.evaluate import eval_embeddings

    recs = tru_dist.recommend(trained, users=[0, 3], k=5)
    emb = eval_embeddings(trained.model, trained.graph)
    data = trained.data
    for rec in recs:
        u = rec["user"]
        seen = set(data.items[(data.users == u) & (data.labels == TRAIN)].tolist())
        scores = (emb.user[u] @ emb.item.T).detach().numpy()
        scores[list(seen)] = -np.inf
        assert rec["items"] == np.argsort(-scores, kind="stable")[:5].tolist()
        assert rec["scores"] == pytest.approx(scores[rec["items"]].tolist(), rel=1e-5)
        assert not seen & set(rec["items"])
    with pytest.raises(RequestError, match="unknown user id"):
        tru_dist.recommend(trained, users=[0, data.n_users], k=5)
    # ids must be whole numbers: 0.7, 1.9 and True were served as users 0, 1 and 1
    for users in ([0.7], np.array([1.9]), True, None, [[0, 1]], [2**70], [], [float("nan")]):
        with pytest.raises(RequestError, match="users must be an integer id"):
            tru_dist.recommend(trained, users=users, k=5)
    assert [r["user"] for r in tru_dist.recommend(trained, users=np.array([3.0, 0.0]), k=2)] == [3, 0]
    # ASCII digits only: '²' raised a ValueError traceback, '١' was served as user 1, '--1' raised
    for users in ("²", "١", "--1", "1,x"):
        with pytest.raises(RequestError, match="users must be integer ids separated by commas"):
            tru_dist.recommend(trained, users=users, k=2)
    assert [r["user"] for r in tru_dist.recommend(trained, users="3, 0", k=2)] == [3, 0]
    with pytest.raises(RequestError, match="unknown user id\\(s\\) 99999999999999999999999"):
        tru_dist.recommend(trained, users="0,99999999999999999999999", k=2)  # was "must be an integer id"
    with pytest.raises(RequestError, match="user id\\(s\\) 1 given more than once"):  # served three times
        tru_dist.recommend(trained, users="1,0,1,1", k=2)
    for k in (True, 0.5, "5", 0):
        with pytest.raises(ConfigError, match="k must be an integer of at least 1"):
            tru_dist.recommend(trained, users=[0], k=k)


def test_export_embeddings(trained, tmp_path):
    from tru_dist.train.evaluate import eval_embeddings

    arrays = tru_dist.export_embeddings(trained, out=tmp_path / "emb.npz")
    emb = eval_embeddings(trained.model, trained.graph)
    assert arrays["user"].shape == (trained.data.n_users, 64)
    assert arrays["item"].shape == (trained.data.n_items, 64)
    np.testing.assert_allclose(arrays["item"], emb.item.numpy())
    with np.load(tmp_path / "emb.npz") as f:
        np.testing.assert_array_equal(f["user"], arrays["user"])


def test_unlearn_from_a_dataframe_is_ledgered(trained, tmp_path):
    requests = pd.DataFrame({"request_id": ["a", "b"], "user_id": [1, 2], "item_id": [None, None],
                             "reason": ["gdpr", "gdpr"]})
    out = tmp_path / "tru"
    done = tru_dist.unlearn(trained, requests=requests, method="tru", config={"unlearn.epochs": 1}, out=out)
    assert not done.metrics["replayed"] and done.metrics["forget_set"]["n_removed_users"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["unlearn"]["epochs"] == 1
    again = tru_dist.unlearn(trained.path, requests=requests, method="tru", out=out)
    assert again.metrics["replayed"] and again.metrics["receipt"] == done.metrics["receipt"]
    assert tru_dist.recommend(done, users="1", k=3)[0]["user"] == 1
    # the same batch onto the unlearned run, into a new folder: answered from the run (it holds the
    # batch), nothing written there (it said "no checkpoint in NEW; train first")
    fresh = tmp_path / "fresh"
    replay = tru_dist.unlearn(done, requests=requests, method="tru", out=fresh)
    assert replay.metrics["replayed"] and replay.metrics["receipt"] == done.metrics["receipt"]
    assert replay.path == done.path and not fresh.exists()


def test_a_reused_request_id_asking_for_other_data_is_refused_not_replayed(trained, tmp_path):
    """An applied request id whose rows now name another user (or another item) was answered
    "replayed": the new user was never deleted, and nothing said so."""
    first = pd.DataFrame({"request_id": ["r1", "r2"], "user_id": [3, 5], "item_id": [None, None],
                          "reason": "gdpr"})
    out = tmp_path / "u"
    done = tru_dist.unlearn(trained, requests=first, method="reverse_bpr", config={"unlearn.epochs": 1},
                            out=out)
    ledger = (out / "ledger.jsonl").read_text()
    assert len(done.metrics["receipt"]["request_digests"]) == 2
    same = first.iloc[::-1].reset_index(drop=True)  # the same requests in another order: a replay
    assert tru_dist.unlearn(trained, requests=same, method="reverse_bpr", out=out).metrics["replayed"]
    other_user = first.assign(user_id=[3, 10])
    one_item = first.assign(item_id=pd.array([None, int(trained.data.items[trained.data.users == 5][0])],
                                             dtype="Int64"))
    for changed in (other_user, one_item):
        with pytest.raises(RequestError, match=r"request id\(s\) r2 were applied before .* new request_id"):
            tru_dist.unlearn(trained, requests=changed, method="reverse_bpr", out=out)
    assert (out / "ledger.jsonl").read_text() == ledger  # nothing written


def test_an_update_that_changes_no_weight_says_so(trained, tmp_path, caplog):
    """noop (and an update whose gate finds nothing to move) keeps the trained weights: the
    receipt's model_after equals model_before, which verify-deletion then reports — unlearn warns."""
    item = int(trained.data.items[trained.data.users == 4][0])
    requests = pd.DataFrame({"request_id": ["n1"], "user_id": [4], "item_id": [item], "reason": "gdpr"})
    with caplog.at_level(logging.WARNING, logger="tru_dist"):
        done = tru_dist.unlearn(trained, requests=requests, method="noop", out=tmp_path / "n")
    receipt = done.metrics["receipt"]
    assert receipt["model_after"] == receipt["model_before"]
    assert any("left every parameter as it was" in r.getMessage() for r in caplog.records)


def test_training_into_an_unlearned_run_is_refused(trained, tmp_path, capsys):
    """Its ledger would stay and describe deletions the new model never had (the same requests
    were then answered "replayed"); --resume there failed with a raw KeyError."""
    requests = pd.DataFrame({"request_id": ["t1"], "user_id": [7], "item_id": [None], "reason": "gdpr"})
    out = tmp_path / "u"
    tru_dist.unlearn(trained, requests=requests, method="reverse_bpr", config={"unlearn.epochs": 1}, out=out)
    before = sorted(p.name for p in out.iterdir())
    for extra in ([], ["--resume"]):
        argv = ["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(out), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds an unlearned run" in err, err
    assert sorted(p.name for p in out.iterdir()) == before


def test_new_requests_onto_a_folder_holding_other_deletions_are_refused(trained, tmp_path, capsys):
    """``--run BASE --out U`` where U already holds deletions BASE does not: U's model was replaced
    by BASE's updated for the new batch while U's ledger kept the earlier receipts."""
    first = pd.DataFrame({"request_id": ["a1"], "user_id": [7], "item_id": [None], "reason": "gdpr"})
    second = tmp_path / "b.csv"
    pd.DataFrame({"request_id": ["b1"], "user_id": [9], "item_id": [None], "reason": "gdpr"}).to_csv(
        second, index=False)
    out, one_epoch = tmp_path / "u", {"unlearn.epochs": 1}
    done = tru_dist.unlearn(trained, requests=first, method="reverse_bpr", config=one_epoch, out=out)
    state = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["unlearn", "--run", str(trained.path), "--requests", str(second), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"already holds deletions {trained.path} does not" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == state
    # the same requests again still replay, and U itself takes the new batch
    assert tru_dist.unlearn(trained, requests=first, method="reverse_bpr", out=out).metrics["replayed"]
    chained = tru_dist.unlearn(done, requests=second, method="reverse_bpr", config=one_epoch, out=out)
    assert not chained.metrics["replayed"]


def test_an_unlearned_run_is_evaluated_and_served_without_what_it_deleted(trained, tmp_path):
    """Evaluate and recommend read an unlearned run with the graph and history it serves with —
    its ledger's deletions removed: evaluate reproduces unlearn's own figures (scored on D_r, not
    on the graph still holding the deleted pairs, which gives other figures), and a deleted
    item is no longer hidden from its user as "seen" (the original run still hides it)."""
    from tru_dist.data.dataset import TRAIN
    from tru_dist.train.evaluate import evaluate
    from tru_dist.train.trainer import load_run as trainer_load

    data = trained.data
    train = data.labels == TRAIN
    users = np.unique(data.users[train])[:20]
    firsts = [int(data.items[train & (data.users == u)][0]) for u in users]
    requests = pd.DataFrame({"request_id": [f"p{u}" for u in users], "user_id": users, "item_id": firsts,
                             "reason": "gdpr"})
    done = tru_dist.unlearn(trained, requests=requests, method="reverse_bpr", config={"unlearn.epochs": 1},
                            out=tmp_path / "u")
    ev = tru_dist.evaluate(done, overrides=["train.device=cpu"])
    for split in ("valid", "test"):
        assert ev[split] == pytest.approx(done.metrics[split], abs=1e-9), split
    cfg, full, graph, model = trainer_load(done.path)  # the same model over the graph before deletion
    stale = {split: evaluate(model, graph, full, split, cfg.eval.ks) for split in ("valid", "test")}
    assert any(stale[split] != pytest.approx(ev[split], abs=1e-9) for split in ("valid", "test"))
    u, i = int(users[0]), firsts[0]
    everything = data.n_items  # every item the user has not (or no longer) got in train
    served = tru_dist.recommend(done, users=[u], k=everything)[0]["items"]
    hidden = tru_dist.recommend(trained, users=[u], k=everything)[0]["items"]
    assert i in served and i not in hidden
    assert len(served) == len(hidden) + 1


def test_an_unlearned_run_is_evaluated_without_what_it_deleted_at_two_workers_too(trained, tmp_path,
                                                                                  monkeypatch):
    """W = 2 workers cut the served state (the ledger's deletions removed) out of the same run
    per shard: their figures are the unlearn run's own (float tolerance across W), not the
    stale graph's."""
    from tru_dist.data.dataset import TRAIN

    data = trained.data
    train = data.labels == TRAIN
    users = np.unique(data.users[train])[::7][:20]  # spread over both workers' user ranges
    firsts = [int(data.items[train & (data.users == u)][0]) for u in users]
    requests = pd.DataFrame({"request_id": [f"q{u}" for u in users], "user_id": users, "item_id": firsts,
                             "reason": "gdpr"})
    done = tru_dist.unlearn(trained, requests=requests, method="reverse_bpr", config={"unlearn.epochs": 1},
                            out=tmp_path / "u")
    from tru_dist.distributed import commands

    workers, run_distributed = [], commands.run_distributed

    def recorded(kind, cfg, **kw):
        workers.append(cfg.dist.workers)
        return run_distributed(kind, cfg, **kw)

    monkeypatch.setattr(commands, "run_distributed", recorded)
    ev = tru_dist.evaluate(done, overrides=["train.device=cpu", "dist.workers=2", "dist.address=none"])
    assert workers == [2]
    for split in ("valid", "test"):  # the stale graph's figures differ (the W = 1 test above)
        assert ev[split] == pytest.approx(done.metrics[split], abs=1e-6), split


def test_cli_commands_call_the_api(trained, tmp_path, capsys):
    assert main(["recommend", "--run", str(trained.path), "--users", "0,1", "--k", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == tru_dist.recommend(trained, users=[0, 1], k=5)
    assert main(["recommend", "--run", str(trained.path), "--users", "0,99999", "--k", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown user id(s) 99999") and len(err.splitlines()) == 1
    assert main(["evaluate", "--run", str(trained.path), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(trained.metrics["test"])


def test_train_on_unreadable_data_leaves_no_folder(tmp_path):
    """The API wrote out/config.yaml before opening the data (the CLI removed it; the API did
    not), and a DataFrame given as data= was reported as a missing path."""
    with pytest.raises(TruDistError, match="does not exist"):
        tru_dist.train(data=tmp_path / "nowhere", model="lightgcn", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="not a DataFrame"):
        tru_dist.train(data=pd.DataFrame({"a": [0]}), model="lightgcn", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_arguments_of_the_wrong_type_are_one_line_errors(trained, tmp_path):
    """A number or None where a path goes, a number as config, an output under a file: raw
    TypeError / FileExistsError tracebacks before."""
    with pytest.raises(ConfigError, match="run must be a path .* not int 123"):
        tru_dist.recommend(123, users=[0], k=3)
    with pytest.raises(ConfigError, match="out must be a path .* not NoneType"):
        tru_dist.train(data="synthetic:tiny", model="lightgcn", out=None)
    with pytest.raises(ConfigError, match="out must be a path"):
        tru_dist.train(data="synthetic:tiny", model="lightgcn", out="")
    requests = pd.DataFrame({"request_id": ["r1"], "user_id": [1], "item_id": [None], "reason": ["gdpr"]})
    with pytest.raises(ConfigError, match="config/overrides must be a mapping .* not int 5"):
        tru_dist.unlearn(trained, requests=requests, config=5, out=tmp_path / "u")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="lies under .*afile, which is a file"):
        tru_dist.export_embeddings(trained, out=tmp_path / "afile" / "emb.npz")
    with pytest.raises(ConfigError, match="lies under .*afile, which is a file"):
        tru_dist.unlearn(trained, requests=requests, out=tmp_path / "afile" / "u")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_train_without_data_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--model", "mgcn", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --data is required") and "synthetic:small" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert main(["compare", "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("error: --data is required")
    with pytest.raises(ConfigError, match="no data named"):
        tru_dist.train(out=tmp_path / "r")


def test_every_epoch_logs_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tru_dist")
    run = tru_dist.train(data="synthetic:tiny", model="mgcn", out=tmp_path / "m",
                         overrides={**FAST, "train.eval_every": 2})
    lines = [r.getMessage() for r in caplog.records if r.name == "tru_dist.train"]
    assert len(lines) == run.metrics["epochs"] == 3
    assert lines[0].startswith("mgcn epoch 1/3 loss ") and "not evaluated" in lines[0]
    assert "valid recall@20 " in lines[1] and "(best " in lines[1] and lines[1].endswith("s")
    defaults = [r.getMessage() for r in caplog.records if r.name == "tru_dist.api"]
    assert defaults and defaults[0].startswith("model defaults mgcn (published")
    assert "model.cl_weight=0.01" in defaults[0]


def test_cli_without_a_tty_prints_one_line_per_epoch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tru_dist", "train", "--model", "lightgcn", "--data", "synthetic:tiny",
         "--out", str(tmp_path / "r"), "--train.epochs=2", "--train.batch_size=512"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr
    epochs = [line for line in proc.stderr.splitlines() if " epoch " in line]
    assert len(epochs) == 2 and all("loss" in e and "valid recall@20" in e for e in epochs)
    assert "model defaults lightgcn (published" in proc.stderr
    assert json.loads(proc.stdout)["epochs"] == 2  # results alone on stdout
    assert (tmp_path / "r" / "config.yaml").exists()


def test_retrain_inside_compare_logs_its_epochs(tmp_path, caplog):
    from tru_dist.compare import CompareSpec, run_compare
    from tru_dist.config import build_config

    caplog.set_level(logging.INFO, logger="tru_dist")
    cfg = build_config(model="lightgcn", overrides=["data.path=synthetic:tiny", "train.epochs=2",
                                                    'train.progress="off"', "unlearn.epochs=1"])
    run_compare(cfg, CompareSpec(methods=["retrain"], seeds=1, fraction=0.05), tmp_path / "c")
    lines = [r.getMessage() for r in caplog.records if r.name == "tru_dist.train"]
    assert len(lines) == 4  # the original's 2 epochs, then Retrain's 2


def test_device_auto_trains_where_torch_can(tmp_path):
    run = tru_dist.train(data="synthetic:tiny", out=tmp_path / "a", overrides={**FAST, "train.epochs": 1},
                         config={"train": {"device": "auto"}})
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert run.config.train.device == "auto" and next(run.model.parameters()).device.type == expected


def test_a_run_trained_on_two_workers_loads_and_serves(tmp_path):
    """W = 2 (two local gloo processes): load_run opens the full checkpoint.pt, and evaluating it
    in one process gives the metrics the two workers reported."""
    run = tru_dist.train(data="synthetic:tiny", model="lightgcn", out=tmp_path / "w2",
                         overrides={**FAST, "train.epochs": 2, "dist.workers": 2, "dist.address": "none"})
    ranks = sorted(p.name for p in run.path.glob("checkpoint*.pt"))
    assert ranks[0] == "checkpoint.pt" and "checkpoint.rank1.pt" in ranks
    loaded = tru_dist.load_run(run.path)
    assert loaded.world_size == 2 and loaded.config.dist.workers == 2
    ev = tru_dist.evaluate(loaded)
    for split in ("valid", "test"):
        assert ev[split]["recall@20"] == pytest.approx(run.metrics[split]["recall@20"], abs=1e-6)
    assert len(tru_dist.recommend(loaded, users=[0, 150], k=4)[1]["items"]) == 4


def test_api_train_refuses_to_replace_a_run_without_resume(tmp_path):
    """``api.train(out=RUN)`` on a trained run retrained there and replaced it without a word
    (only the CLI refused); ``resume=True`` continues it."""
    out = tmp_path / "run"
    tru_dist.train("synthetic:tiny", out=out, model="lightgcn", overrides=["train.epochs=1", "model.dim=8"])
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run .*resume=True"):
        tru_dist.train("synthetic:tiny", out=out, model="lightgcn",
                       overrides=["train.epochs=2", "model.dim=8"])
    assert (out / "checkpoint.pt").read_bytes() == before
    run = tru_dist.train("synthetic:tiny", out=out, model="lightgcn", resume=True,
                         overrides=["train.epochs=2", "model.dim=8"])
    assert run.metrics["epochs"] == 2


def test_recommend_says_which_users_it_serves_without_history(tmp_path, caplog):
    """A wholly deleted user is served from the reset row, as a new user; nothing said so."""
    run = tru_dist.train("synthetic:tiny", out=tmp_path / "run", model="lightgcn",
                         overrides=["train.epochs=1", "model.dim=8"])
    requests = pd.DataFrame({"request_id": ["forget-3", "pair-0"], "user_id": [3, 0],
                             "item_id": pd.array([None, int(run.data.items[(run.data.users == 0)
                                                                           & (run.data.labels == 0)][0])],
                                                 dtype="Int64"), "reason": ["gdpr", "gdpr"]})
    unlearned = tru_dist.unlearn(run, requests=requests, method="noop", out=tmp_path / "u")
    with caplog.at_level(logging.WARNING, logger="tru_dist"):
        recs = tru_dist.recommend(unlearned, users=[0, 3, 1], k=3)
    assert [r["user"] for r in recs] == [0, 3, 1] and all(len(r["items"]) == 3 for r in recs)
    warned = [r.getMessage() for r in caplog.records if "have no train interaction" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("user(s) 3 have")  # not user 0: one pair deleted
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tru_dist"):
        tru_dist.recommend(run, users=[3], k=3)  # the original still holds user 3's history
    assert not [r for r in caplog.records if "have no train interaction" in r.getMessage()]
