"""``tru-dist demo``: its report says, from the run's own stats, what TRU did in each deletion."""

from __future__ import annotations

import json

import pytest

from tru_dist.demo import DELETIONS, DEMO_METHODS, tru_note


def _seed_file(tmp_path, stats: dict):
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps({"tru": {"stats": stats}}))
    return path


def test_the_note_follows_what_tru_did(tmp_path):
    on_target = "calibrated (every deleted pair is a deleted user's: on target)"
    assert tru_note(_seed_file(tmp_path, {"steps": 0, "gate_target": on_target})).startswith(
        "TRU took no update step: every deleted pair is a reset user's")
    assert tru_note(_seed_file(tmp_path, {"steps": 0})) == (
        "TRU took no update step, so it serves what `noop` serves.")
    assert tru_note(_seed_file(tmp_path, {"steps": 7, "epochs_run": 9,
                                          "utility_check": {"kept": "update"}})) == (
        "TRU took 7 update step(s) over 9 gate pass(es).")
    undone = tru_note(_seed_file(tmp_path, {"steps": 3, "epochs_run": 3, "utility_check": {"kept": "start"}}))
    assert undone.startswith("TRU took 3 update step(s) over 3 gate pass(es); its utility check then "
                             "returned the start model")


def test_every_deletion_is_compared_with_noop():
    """Without `noop` a reader cannot tell a method's forgetting from the shared deletion step's."""
    assert "noop" in DEMO_METHODS and "retrain" in DEMO_METHODS
    assert [regime for regime, _ in DELETIONS] == ["users", "interactions"]


@pytest.mark.slow
def test_quick_demo_reports_both_deletions_with_noop(tmp_path, ray_session):
    """``tru-dist demo --quick`` end to end: both deletions compared with `noop`; deleting whole
    users TRU takes no step and serves exactly what `noop` serves; deleting interactions it steps."""
    from tru_dist.demo import run_demo

    report = run_demo(tmp_path / "demo", quick=True).read_text()
    assert "## Unlearning: delete 5% of users (MGCN)" in report
    assert "## Unlearning: delete 5% of interactions (MGCN)" in report
    users = json.loads((tmp_path / "demo" / "compare-users" / "results.json").read_text())["methods"]
    assert set(DEMO_METHODS) <= set(users)
    assert users["tru"]["retrain_distance"] == users["noop"]["retrain_distance"]
    assert "TRU took no update step" in report
    seed = json.loads((tmp_path / "demo" / "compare-interactions" / "seed0.json").read_text())
    assert seed["tru"]["stats"]["steps"] > 0
    assert f"TRU took {seed['tru']['stats']['steps']} update step(s)" in report
