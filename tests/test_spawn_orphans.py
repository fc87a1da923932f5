"""Ranks spawned by ``spawn_local`` (``--workers W --address none``) leave with their driver.

torch's spawn sends a rank SIGINT when its parent dies, which does nothing where SIGINT is
ignored — in every background job of a script (``tru-dist train ... &``), under ``nohup``. A
driver killed by SIGTERM (``kill``, ``timeout``) there left its ranks running as orphans: they
finished the run and wrote OUT's checkpoint and metrics after the command was killed, or sat in
a collective until the group's 300 s timeout, holding the caller's stdout/stderr pipes open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc-style parent ids")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(") ", 1)[-1].startswith("Z"))


def test_spawned_ranks_exit_when_their_driver_is_killed(tmp_path):
    (tmp_path / "napper.py").write_text(textwrap.dedent("""
        import os, time
        from pathlib import Path

        def nap(rank, world_size, folder):
            Path(folder, f"{rank}.pid").write_text(str(os.getpid()))
            time.sleep(120)
    """))
    driver = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys; sys.path.insert(0, sys.argv[1]); from napper import nap; "
         "signal.signal(signal.SIGINT, signal.SIG_IGN); "  # as in a script's background job (inherited)
         "from tru_dist.distributed.process_group import spawn_local; "
         "spawn_local(nap, 2, args=(sys.argv[1],), threads_per_rank=1)", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = [int(p.read_text()) for p in tmp_path.glob("*.pid") if p.read_text()]
            time.sleep(0.2)
        assert len(pids) == 2, "the ranks did not start"
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "ranks outlived their killed driver"
    finally:
        driver.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
