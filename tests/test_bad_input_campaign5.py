"""Inputs the fourth campaign left borderline, each now refused in one line (or named right).

* ``--address HOST:PORT`` where nothing listens: refused within seconds, where ``ray.init``
  retried for more than 90 s and ignored SIGTERM;
* stdout on a full disk (``> /dev/full``): one line, not a traceback;
* a FIFO given as ``--requests`` and a symlink loop or dangling link given as ``--data``: named
  as what they are, not "does not exist";
* an ``.inter`` header that names a column twice: named, not pandas' ``userID.1``;
* an empty or comment-only ``--config``: refused (``{}`` still means "no settings");
* ``data forget --regime poison`` on clean data names the CLI command, not a Python function;
* ``data forget --out`` inside a store: refused, nothing written;
* a request file every row of which an earlier file deletes: refused before file 1 runs.

(A corrupt checkpoint in a verify-deletion scan is in :mod:`test_bad_input_campaign4_data`.)
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pytest
from test_bad_input_campaign import one_line_error

from tru_dist.config import load_yaml
from tru_dist.distributed.commands import check_request_files
from tru_dist.distributed.launch import host_port, probe_address
from tru_dist.errors import ConfigError


def _free_loopback_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- an address where nothing listens ----------------------------------------------------------
@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:6379", ("127.0.0.1", 6379)),
    ("ray://127.0.0.1", ("127.0.0.1", 10001)),
    ("ray://[::1]:10002/", ("::1", 10002)),
    ("[::1]:6379", ("::1", 6379)),
    ("auto", None), ("local", None), ("none", None),
    ("http://127.0.0.1:8265", None),  # a RAY_ADDRESS naming the dashboard is Ray's to read
    ("head", None), ("10.0.0.1", None),  # no port: only ray:// has a default one
])
def test_the_probed_host_and_port(address, expected):
    assert host_port(address) == expected


def test_an_address_where_nothing_listens_is_refused_at_once():
    port = _free_loopback_port()
    refused = rf"nothing answers at --address 127.0.0.1:{port} \(connection refused\)"
    with pytest.raises(ConfigError, match=refused):
        probe_address(f"127.0.0.1:{port}")


def test_auto_is_probed_through_ray_address(monkeypatch):
    port = _free_loopback_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=f"nothing answers at RAY_ADDRESS=127.0.0.1:{port}"):
        probe_address("auto")


def test_a_listening_address_passes_the_probe():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        probe_address(f"127.0.0.1:{server.getsockname()[1]}")  # no error


@pytest.mark.slow
def test_a_ray_client_head_that_accepts_and_never_answers_is_one_line(tmp_path):
    """The probe passes (the port accepts); Ray Client gives up after ~30 s — with the one-line
    error, and without the two-line UserWarning it printed before it. Nothing is written."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: server.accept()[0], None)), daemon=True).start()
    try:
        out = tmp_path / "run"
        address = f"ray://127.0.0.1:{server.getsockname()[1]}"
        proc = subprocess.run([sys.executable, "-m", "tru_dist", "train", "--data", "synthetic:tiny",
                               "--model", "lightgcn", "--out", str(out), "--train.epochs=1",
                               "--address", address],
                              capture_output=True, text=True, timeout=180,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    finally:
        server.close()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr and "warn(" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith(f"error: no Ray cluster to join at --address {address}"), err
    assert not out.exists()


def _cli(args: list[str], stdout: int | IO = subprocess.PIPE) -> subprocess.CompletedProcess:
    """``tru-dist args`` in a fresh process (no Ray initialised by other tests)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "tru_dist", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, env=env)


def _error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines (train logs its defaults line first); a traceback fails the caller."""
    assert "Traceback" not in stderr, stderr[-2000:]
    return [x for x in stderr.splitlines() if x.startswith("error:")]


def test_train_on_an_address_where_nothing_listens_fails_in_one_line(tmp_path):
    port = _free_loopback_port()
    proc = _cli(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(tmp_path / "run"),
                 "--address", f"127.0.0.1:{port}", "--train.epochs=1"])
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-800:]
    assert len(lines) == 1 and f"nothing answers at --address 127.0.0.1:{port}" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


# -- stdout on a full disk ---------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_stdout_on_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        proc = _cli(["data", "stats", "--data", "synthetic:tiny"], stdout=full)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr[-800:]
    assert len(lines) == 1, proc.stderr
    assert "No space left on device" in lines[0] and "standard output" in lines[0], proc.stderr


# -- paths that are not what they seem -----------------------------------------------------------
def test_a_fifo_as_requests_is_named_a_fifo(tmp_path, capsys):
    fifo = tmp_path / "requests.csv"
    os.mkfifo(fifo)
    # check_request_files reads each file first: a FIFO must be named without being opened
    with pytest.raises(Exception, match=r"requests.csv is a FIFO, not a regular file"):
        check_request_files([fifo])


def test_a_symlink_loop_as_data_is_named_a_loop(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    one_line_error(["data", "stats", "--data", str(a)], capsys, str(a), "symlink loop")


def test_a_dangling_link_as_data_names_its_target(tmp_path, capsys):
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "moved-away")
    one_line_error(["data", "stats", "--data", str(link)], capsys, "is a link to", "moved-away")


def test_a_header_that_names_a_column_twice(tmp_path, capsys):
    folder = tmp_path / "mm"
    folder.mkdir()
    (folder / "mm.inter").write_text("userID\titemID\trating\ttimestamp\titemID\tx_label\n0\t0\t1\t0\t0\t0\n")
    err = one_line_error(["data", "stats", "--data", str(folder)], capsys, "mm.inter",
                         "itemID more than once")
    assert "itemID.1" not in err


# -- an empty config -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_or_comment_only_config_is_refused(text, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    one_line_error(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--config", str(path),
                    "--out", str(tmp_path / "run")], capsys, str(path), "holds no settings")


def test_an_explicit_empty_mapping_still_means_no_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}  # nothing to set\n")
    assert load_yaml(path) == {}


# -- data forget ---------------------------------------------------------------------------------
def test_the_poison_regime_on_clean_data_names_the_cli_command(tmp_path, capsys):
    one_line_error(["data", "forget", "--data", "synthetic:tiny", "--regime", "poison", "--fraction", "0.01",
                    "--out", str(tmp_path / "f.csv")], capsys, "tru-dist data poison")


def test_a_forget_set_is_not_written_into_a_store_even_through_a_link(tmp_path, capsys):
    from tru_dist.cli import main

    store = tmp_path / "store"
    assert main(["data", "synth", "--format", "store", "--out", str(store), "--users", "60",
                 "--items", "40"]) == 0
    before = sorted(p.name for p in store.rglob("*"))
    (tmp_path / "linked").symlink_to(store)
    for out in (store / "forget.csv", tmp_path / "linked" / "forget.csv"):
        one_line_error(["data", "forget", "--data", str(store), "--regime", "users", "--fraction", "0.05",
                        "--out", str(out)], capsys, f"inside the store {store.resolve()}")
    assert sorted(p.name for p in store.rglob("*")) == before


# -- a row two request files delete --------------------------------------------------------------
def _requests(path: Path, rows: list[tuple[str, int, int | None]]) -> Path:
    pd.DataFrame({"request_id": [r for r, _, _ in rows], "user_id": [u for _, u, _ in rows],
                  "item_id": pd.array([i for _, _, i in rows], dtype="Int64"), "reason": "x"}
                 ).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("first", "second"), [
    ([("a1", 3, 5)], [("b1", 3, 5)]),                       # the same pair
    ([("a1", 3, None)], [("b1", 3, 5), ("b2", 3, 6)]),      # pairs of a user deleted whole
    ([("a1", 3, None)], [("b1", 3, None)]),                 # the same user twice
])
def test_a_file_whose_every_row_an_earlier_file_deletes_is_refused_before_any_runs(first, second, tmp_path,
                                                                                   capsys):
    a, b = _requests(tmp_path / "a.csv", first), _requests(tmp_path / "b.csv", second)
    nothing_new = r"b.csv deletes nothing new: every row it names .*a.csv deletes already"
    with pytest.raises(ConfigError, match=nothing_new):
        check_request_files([a, b])
    # through the CLI: refused before the run is even read, so no folder of file 1 appears
    one_line_error(["unlearn", "--run", str(tmp_path / "no-run-needed"), "--requests", str(a), "--requests",
                    str(b), "--out", str(tmp_path / "out")], capsys, "b.csv", "deletes nothing new")


def test_request_files_that_delete_new_rows_pass(tmp_path):
    """The control: a user's other pair, a pair of another user, a user deleted after a pair of
    theirs, and a file with one overlapping row beside a new one (the overlap is skipped at run
    time, as with separate commands) all pass."""
    a = _requests(tmp_path / "a.csv", [("a1", 3, 5), ("a2", 4, None)])
    b = _requests(tmp_path / "b.csv", [("b1", 3, 6), ("b2", 5, 5), ("b3", 3, None)])
    c = _requests(tmp_path / "c.csv", [("c1", 3, 5), ("c2", 9, 1)])
    check_request_files([a, b, c])


# -- worker pool options -------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "value"), [
    ("threads_per_rank", 0), ("threads_per_rank", 1.5), ("threads_per_rank", True),
    ("start_timeout_s", 0), ("collective_timeout_s", float("nan")), ("task_timeout_s", -1),
    ("task_timeout_s", float("inf")),
])
def test_a_worker_pool_option_out_of_range_is_refused_before_any_rank_starts(option, value):
    from tru_dist import api

    with pytest.raises(ConfigError, match=rf"^{option} must be .*, not {value!r}"):
        api.worker_pool(2, **{option: value})


def test_numpy_numbers_are_worker_pool_options_like_python_ones():
    from tru_dist.distributed.pool import _check_pool_options

    _check_pool_options(np.int64(2), start_timeout_s=np.float32(3.0), collective_timeout_s=np.int32(5),
                        task_timeout_s=None)  # no error
    with pytest.raises(ConfigError, match="threads_per_rank"):
        _check_pool_options(np.int64(0), start_timeout_s=1, collective_timeout_s=1, task_timeout_s=None)


# -- campaign 5 (a helper's probe): values the config took, runs served without their ledger ----
@pytest.mark.parametrize(("override", "key"), [
    ("unlearn.lr=1e38", "unlearn.lr"), ("unlearn.gate.lr=1e300", "unlearn.gate.lr"),
    ("train.lr=1e300", "train.lr"),                                   # float32 overflow tracebacks
    ("unlearn.gate.top_k=100000000000000000000", "unlearn.gate.top_k"),  # OverflowError traceback
    ("unlearn.isolation.row_hops=100000000000000000000", "unlearn.isolation.row_hops"),  # hung
    ("model.n_layers=100000000000000000000", "model.n_layers"),       # hung
    ("train.epochs=1:0", "train.epochs"),                              # YAML 1.1 base 60: 60 epochs
    ("train.epochs=0x10", "train.epochs"),
    ("eval.ks=[10, 010]", "eval.ks"),                                  # octal: [10, 8]
])
def test_an_out_of_range_or_misread_config_value_is_refused(override, key):
    from tru_dist.config import build_config

    with pytest.raises(ConfigError, match=rf"invalid value for '{re.escape(key)}'"):
        build_config(overrides=[override])


def test_numbers_are_decimal_on_the_command_line_and_in_files(tmp_path):
    from tru_dist.config import build_config

    assert build_config(overrides=["train.epochs=010"]).train.epochs == 10  # was octal 8
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 010\n  lr: 1.0e-3\n")
    cfg = build_config(config_file=tmp_path / "c.yaml")
    assert cfg.train.epochs == 10 and cfg.train.lr == pytest.approx(1e-3)


def test_a_step_size_that_overflows_is_one_line_before_anything_is_written(tmp_path, capsys):
    one_line_error(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out",
                    str(tmp_path / "run"), "--train.lr=1e300", "--address", "none"], capsys, "train.lr",
                   "(0, 1e6]")


@pytest.mark.parametrize("spec", ["synthetic:60x40:-1", "synthetic:60x40:abc", "synthetic:60x40:1:2",
                                  "synthetic:tiny:xyz", "synthetic:60x40:", "synthetic:60x40:²",
                                  "synthetic:60x40:99999999999"])
def test_a_synthetic_spec_with_a_bad_seed_is_refused_not_read_as_seed_0(spec, capsys):
    one_line_error(["data", "stats", "--data", spec], capsys, spec)


@dataclass
class Unlearned:
    root: Path
    run: Path     # trained
    users: Path   # unlearned from run: two users deleted
    pairs: Path   # unlearned from run: pairs deleted (a sibling of `users`)
    requests: Path


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory) -> Unlearned:
    from tru_dist.cli import main

    root = tmp_path_factory.mktemp("unlearned")
    run = root / "run"
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(run),
                 "--train.epochs=1", "--model.dim=8", "--address", "none"]) == 0
    users = _requests(root / "users.csv", [("u3", 3, None), ("u5", 5, None)])
    pairs = _requests(root / "pairs.csv", [("p1", 7, None)])
    for req, out in ((users, root / "run-u"), (pairs, root / "run-p")):
        assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out), "--method",
                     "reverse_bpr", "--unlearn.epochs=1", "--address", "none"]) == 0
    return Unlearned(root, run, root / "run-u", root / "run-p", users)


@pytest.mark.parametrize("damage", ["emptied", "removed"])
def test_an_unlearned_run_without_its_ledger_is_not_served(damage, unlearned, tmp_path, capsys):
    """Served without the ledger, a wholly deleted user got their deleted history back."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(unlearned.users, run)
    if damage == "emptied":
        (run / "ledger.jsonl").write_text("")
    else:
        (run / "ledger.jsonl").unlink()
    one_line_error(["recommend", "--run", str(run), "--users", "3", "--k", "3"], capsys,
                   "was unlearned", "ledger.jsonl is missing or empty")
    one_line_error(["evaluate", "--run", str(run), "--address", "none"], capsys, "ledger.jsonl is missing")


def test_an_audit_against_a_sibling_run_is_refused(unlearned, capsys):
    one_line_error(["audit", "--run", str(unlearned.users), "--requests", str(unlearned.requests),
                    "--original", str(unlearned.pairs)], capsys, "model_before", "source_run")


def test_a_named_index_in_a_request_table_is_refused_not_dropped(unlearned, tmp_path):
    from tru_dist.data.requests import normalize_requests, read_requests
    from tru_dist.errors import RequestError

    frame = pd.read_csv(unlearned.requests).set_index(pd.Index(["t-1", "t-2"], name="ticket"))
    frame.to_parquet(tmp_path / "r.parquet")
    for read in (lambda: read_requests(tmp_path / "r.parquet"), lambda: normalize_requests(frame)):
        with pytest.raises(RequestError, match="an index named 'ticket'"):
            read()
    filtered = pd.read_csv(unlearned.requests).iloc[[1]]  # an unnamed, non-range index: a plain frame
    assert len(normalize_requests(filtered)) == 1


def test_the_api_takes_numpy_values_in_overrides_and_names_other_types(unlearned):
    from tru_dist import api

    run = api.load_run(unlearned.run)
    metrics = api.evaluate(run, overrides={"eval.ks": [np.int64(5)], "eval.batch_users": np.int32(64)})
    assert "recall@5" in metrics["test"]
    with pytest.raises(ConfigError, match="eval.ks is of type object, not a number"):
        api.evaluate(run, overrides={"eval.ks": object()})


def test_an_api_error_about_a_series_is_one_line(unlearned):
    from tru_dist import api
    from tru_dist.errors import RequestError

    run = api.load_run(unlearned.run)
    with pytest.raises(RequestError) as err:
        api.recommend(run, pd.Series([0, None], dtype="Int64"), k=2)
    assert "\n" not in str(err.value) and "dtype: Int64" in str(err.value)


# -- campaign 5's borderline cases ---------------------------------------------------------------
def test_a_request_row_with_an_extra_field_is_named_not_shifted(tmp_path, capsys):
    """pandas took the extra field as an index: ``r1,2,4,x,extra`` became request 2, item 'x'."""
    from tru_dist.data.requests import read_requests
    from tru_dist.errors import RequestError

    path = tmp_path / "r.csv"
    path.write_text("request_id,user_id,item_id,reason\nr1,2,4,x,extra\n")
    with pytest.raises(RequestError, match="line 2 has 5 fields, the header 4"):
        read_requests(path)
    path.write_text('request_id,user_id,item_id,reason\nr1,2,4,"a, quoted reason"\n')  # control
    assert read_requests(path)["reason"].tolist() == ["a, quoted reason"]


def test_an_inter_row_with_a_trailing_tab_is_named(tmp_path, capsys):
    folder = tmp_path / "mm"
    folder.mkdir()
    (folder / "mm.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n"
                                     "0\t0\t1\t0\t0\t\n1\t1\t1\t0\t0\n")
    one_line_error(["data", "stats", "--data", str(folder)], capsys, "line 2 has 6 tab-separated fields")


@pytest.mark.parametrize("command", [["data", "synth", "--out", "OUT"],
                                     ["data", "poison", "--data", "synthetic:tiny", "--out", "OUT"]])
def test_every_seed_flag_takes_the_config_s_range(command, tmp_path, capsys):
    from tru_dist.cli import main

    argv = [str(tmp_path / "o") if a == "OUT" else a for a in command]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # an argparse error: usage-style, one line
        main([*argv, "--seed", "99999999999999999999"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert exit_.value.code == 2 and len(err) == 1 and "give a seed in 0..4294967295" in err[0], err


@pytest.mark.parametrize("argv", [["report", "compare", ""], ["data", "stats", "--data", ""],
                                  ["verify-deletion", "--run", "x", "--scan", ""],
                                  ["train", "--model", "lightgcn", "--data.path=", "--out", "OUT"]])
def test_an_empty_path_is_refused_not_read_as_here_or_the_default(argv, tmp_path, capsys):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    one_line_error(argv, capsys, "is empty")


@pytest.mark.parametrize(("override", "said"), [
    ("train.epochs={a: 1}", "'train.epochs' takes a value (now 1000), not a section of keys"),
    ("train=5", "'train' is a section of keys (train.lr"),
])
def test_a_section_and_a_value_are_named_the_right_way_round(override, said):
    from tru_dist.config import build_config

    with pytest.raises(ConfigError, match=re.escape(said)):
        build_config(overrides=[override])


@pytest.mark.parametrize("rid", [" r1", "r1 ", "r1\t"])
def test_a_request_id_with_spaces_around_it_is_refused(rid):
    """``r1`` and ``r1 `` were two requests in one batch; a padded replay was a new request."""
    from tru_dist.data.requests import normalize_requests
    from tru_dist.errors import RequestError

    frame = pd.DataFrame({"request_id": ["r0", rid], "user_id": [1, 2], "item_id": pd.array([None, None],
                                                                                         dtype="Int64")})
    with pytest.raises(RequestError, match=r"row 2: request_id .* has spaces around it"):
        normalize_requests(frame)


def test_a_tab_in_a_config_file_is_named_with_its_line(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n\tepochs: 3\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1\); YAML indents with spaces, not tabs"):
        load_yaml(tmp_path / "c.yaml")


def test_an_unlearned_run_without_its_ledger_is_not_unlearned_further(unlearned, tmp_path, capsys):
    """A further unlearn started a ledger without the lost receipts, and its output served the
    first deletion's users their history again."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(unlearned.users, run)
    (run / "ledger.jsonl").unlink()
    one_line_error(["unlearn", "--run", str(run), "--requests", str(unlearned.root / "pairs.csv"), "--out",
                    str(tmp_path / "next"), "--address", "none"], capsys, "ledger.jsonl is missing or empty")


def test_stray_hash_files_beside_a_trained_model_do_not_block_it(unlearned, tmp_path):
    """The evidence is the checkpoint: a hash file written before a failed ledger write sits
    beside the untouched trained model, which is served as it is."""
    import shutil

    from tru_dist import api

    run = tmp_path / "run"
    shutil.copytree(unlearned.run, run)
    (run / "ledger_hashes").mkdir()
    shutil.copy(next((unlearned.users / "ledger_hashes").glob("*.npz")), run / "ledger_hashes")
    assert api.recommend(api.load_run(run), [3], k=2)


def test_an_audit_over_two_receipts_starts_from_the_first_whatever_the_file_order(unlearned, tmp_path):
    from tru_dist.audit.runner import _check_original_is_the_start
    from tru_dist.cli import main

    chained = tmp_path / "chained"  # run -> run-u (u3, u5) -> chained (p1)
    assert main(["unlearn", "--run", str(unlearned.users), "--requests", str(unlearned.root / "pairs.csv"),
                 "--out", str(chained), "--method", "reverse_bpr", "--unlearn.epochs=1",
                 "--address", "none"]) == 0
    for ids in ({"p1", "u3", "u5"}, {"p1"}):
        expected = unlearned.run if "u3" in ids else unlearned.users
        _check_original_is_the_start(chained, expected, ids)  # no error
    with pytest.raises(Exception, match="model_before"):
        _check_original_is_the_start(chained, unlearned.users, {"p1", "u3"})


def test_a_request_csv_with_cr_only_line_endings_still_reads(tmp_path):
    from tru_dist.data.requests import read_requests

    path = tmp_path / "r.csv"
    path.write_bytes(b"request_id,user_id,item_id,reason\rr1,2,4,x\rr2,3,,y\r")
    assert read_requests(path)["request_id"].tolist() == ["r1", "r2"]


def test_a_dataset_given_as_a_run_is_named_a_dataset(tmp_path, capsys):
    """The hint was "train first (tru-dist train --out STORE)", which train then refuses."""
    from tru_dist.cli import main

    store = tmp_path / "store"
    assert main(["data", "synth", "--format", "store", "--out", str(store), "--users", "60",
                 "--items", "40"]) == 0
    one_line_error(["evaluate", "--run", str(store), "--address", "none"], capsys, "is a dataset, not a run")
