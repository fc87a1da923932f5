"""``tru-dist report sweep|compare`` on a damaged ``sweep.json`` or ``results.json``: one line
``error: ...`` naming the file and what is wrong, exit 2, no traceback — and, for ``report
compare``, no plot or report written before the failure (campaign 2, cases P21–P24, P31–P34,
P110)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
from test_bad_input_campaign import one_line_error

from tru_dist.cli import main
from tru_dist.compare import SCALARS

REPORT_FILES = ("report.md", "tradeoff.png", "time.png")


# -- report sweep ----------------------------------------------------------------------------------
@pytest.mark.parametrize("content, why", [
    (bytes(range(128, 256)), "not UTF-8 text (byte 0x80 at offset 0)"),   # P21
    (b'{"spec": 1\n', "not valid JSON"),                                  # P22: truncated
    (b"[]", "a JSON list, not an object"),                                 # P23
    (b"{}", "lacks 'spec', 'config', 'max_t'"),                            # P24
    (b'{"spec": [], "config": {}, "max_t": 1}', "'spec' is list, not a mapping"),
    (b'{"spec": {}, "config": {}, "max_t": "abc"}', "'max_t' is 'abc'"),
])
def test_report_sweep_on_a_damaged_manifest_is_one_line(tmp_path, capsys, content, why):
    (tmp_path / "sweep.json").write_bytes(content)
    line = one_line_error(["report", "sweep", str(tmp_path)], capsys, str(tmp_path / "sweep.json"), why,
                          "rerun the sweep")
    assert "damaged" in line


def _manifest(tmp_path: Path) -> dict:
    """The manifest ``tru-dist sweep`` writes for ``configs/sweeps/tiny.yaml``."""
    from tru_dist.tune.spec import base_config, load_spec

    spec, _ = load_spec(Path(__file__).parents[1] / "configs" / "sweeps" / "tiny.yaml")
    return {"spec": spec.model_dump(mode="json"), "config": base_config(spec).to_dict(), "max_t": 3,
            "config_path": "tiny.yaml"}


def test_a_sound_manifest_still_loads_and_a_bad_config_in_it_names_the_file(tmp_path, capsys):
    from tru_dist.tune.manifest import load_manifest

    saved = _manifest(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    spec, base, max_t = load_manifest(tmp_path)
    assert spec.model_dump(mode="json") == saved["spec"] and base.to_dict() == saved["config"] and max_t == 3
    saved["config"]["train"]["lr"] = "fast"
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    one_line_error(["report", "sweep", str(tmp_path)], capsys, str(tmp_path / "sweep.json"), "'config'",
                   "train.lr", "'fast'")


def test_report_sweep_on_a_manifest_that_is_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "sweep.json").mkdir()
    one_line_error(["report", "sweep", str(tmp_path)], capsys, "sweep.json", "a folder, not a file")


# -- report compare --------------------------------------------------------------------------------
def _method(recall: float, hit: float, seconds: float) -> dict:
    """A method entry as :func:`tru_dist.compare.aggregate` writes it (one seed)."""
    test = {"recall@20": recall, "ndcg@20": recall / 2}
    forget = {"hit@10": hit / 2, "hit@20": hit, "hit@50": 1.0, "rank_pct": 0.3}
    entry: dict = {"test": test, "test_std": dict.fromkeys(test), "test_ci": dict.fromkeys(test),
                   "forget": forget, "forget_std": dict.fromkeys(forget), "forget_ci": dict.fromkeys(forget),
                   "mia": {"auc": 0.5, "ci": [float("nan"), float("nan")]}, "mia_std": {"auc": None},
                   "per_seed": {"retrain_distance": [None], "seconds": [seconds]}, "stats": [{"epochs": 1}]}
    for key in SCALARS:
        entry[key] = seconds if key == "seconds" else None
        entry[f"{key}_std"] = entry[f"{key}_ci"] = None
    return entry


def _results() -> dict:
    """A small but complete results.json, as ``tru-dist compare`` writes it."""
    return {
        "config": {"model": {"name": "lightgcn"}, "data": {"path": "d"}},
        "spec": {"regime": "users", "policy": "random", "fraction": 0.05, "methods": ["noop", "tru"],
                 "seeds": [0], "audits": ["mia"], "tuned": None},
        "methods": {"original": _method(0.70, 0.8, 1.5), "retrain": _method(0.69, 0.2, 1.2),
                    "tru": _method(0.68, 0.25, 0.01)},
        "paired": {"tru": {"noop": {"diff_mean": -0.1, "ci": [None, None], "per_seed": [-0.1], "n": 1,
                                    "verdict": "tie", "lower_on": 1, "higher_on": 0, "sign_p": 1.0}}},
    }


def _folder(tmp_path: Path, results: dict) -> Path:
    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_report_compare_renders_a_well_formed_results_file(tmp_path, capsys):
    """The checks accept what compare writes (NaN bootstrap bounds, null spreads, stats lists)."""
    folder = _folder(tmp_path, _results())
    assert main(["report", "compare", str(folder)]) == 0, capsys.readouterr().err
    assert all((folder / name).is_file() for name in REPORT_FILES)
    assert "| tru |" in (folder / "report.md").read_text()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no staging left


def _set(results: dict, path: str, value) -> dict:
    """``results`` with the dotted key ``path`` set to ``value`` (``DELETE``: removed)."""
    out = copy.deepcopy(results)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()


@pytest.mark.parametrize("path, value, names", [
    ("methods.tru.test", "x", ["'methods.tru.test'", "'x'", "not a mapping"]),          # P110
    ("methods.tru", "x", ["'methods.tru'", "not a mapping"]),                           # P31
    ("spec", DELETE, ["'spec' is missing"]),                                            # P32
    ("methods", {}, ["'methods' is empty"]),                                            # P33
    ("methods.tru.seconds", "slow", ["'methods.tru.seconds'", "'slow'", "not a finite number"]),  # P34
    ("methods.tru.seconds", -1.0, ["'methods.tru.seconds'", "a negative time"]),
    ("methods.tru.test.recall@20", float("nan"), ["'methods.tru.test.recall@20'", "nan"]),       # P19
    ("methods.tru.forget.hit@20", True, ["'methods.tru.forget.hit@20'", "True"]),
    ("methods.tru.mia.ci", [0.1], ["'methods.tru.mia.ci'", "[low, high]"]),
    ("config", [], ["'config'", "not a mapping"]),
    ("config.model", DELETE, ["'config.model' is missing"]),
    ("spec.fraction", "5%", ["'spec.fraction'", "not a finite number"]),
    ("paired.tru.noop.diff_mean", None, ["'paired.tru.noop.diff_mean' is missing"]),
    ("paired.tru", 3, ["'paired.tru'", "not a mapping"]),
])
def test_report_compare_on_malformed_results_is_one_line_and_writes_nothing(tmp_path, capsys, path, value,
                                                                              names):
    folder = _folder(tmp_path, _set(_results(), path, value))
    one_line_error(["report", "compare", str(folder)], capsys, str(folder / "results.json"), *names,
                   "rerun the comparison")
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]


def test_report_compare_on_a_results_file_that_is_a_folder_says_so(tmp_path, capsys):
    (tmp_path / "results.json").mkdir()
    one_line_error(["report", "compare", str(tmp_path)], capsys, "results.json", "is a folder")


def test_a_report_that_fails_halfway_leaves_the_previous_one_whole(tmp_path, capsys, monkeypatch):
    """Plots and report.md are renamed into place together: a failure while rendering the second
    plot leaves neither a new tradeoff.png beside the old report.md nor a staging folder."""
    import tru_dist.report.plots as plots
    from tru_dist.errors import ConfigError

    folder = _folder(tmp_path, _results())
    for name in REPORT_FILES:
        (folder / name).write_text(f"old {name}")

    def broken(methods, path):
        raise ConfigError("time plot failed")

    monkeypatch.setattr(plots, "time_plot", broken)
    one_line_error(["report", "compare", str(folder)], capsys, "time plot failed")
    assert all((folder / name).read_text() == f"old {name}" for name in REPORT_FILES)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*REPORT_FILES, "results.json"])


def test_a_report_with_no_plottable_method_writes_no_matplotlib_warning(tmp_path, capsys):
    """A method list without forget/test figures drew an empty legend: a multi-line UserWarning."""
    results = _results()
    for entry in results["methods"].values():
        entry["test"], entry["forget"] = {}, {}
    folder = _folder(tmp_path, results)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["report", "compare", str(folder)]) == 0
    assert capsys.readouterr().err.strip() == ""
