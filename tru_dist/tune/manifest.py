"""A sweep folder's manifest (``sweep.json``): the spec, the base config and ``max_t`` it ran with.

Its own module because both :mod:`tru_dist.tune.sweep` (writes it, checks it on resume) and
:mod:`tru_dist.tune.report` (reads it) need it, and the sweep calls the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from tru_dist.config import Config
from tru_dist.errors import ConfigError
from tru_dist.tune.spec import SweepSpec, parse_spec

MANIFEST = "sweep.json"


def load_manifest(sweep_dir: str | Path) -> tuple[SweepSpec, Config, int]:
    """(spec, base config, max_t) of an existing sweep folder."""
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise ConfigError(f"{sweep_dir} holds no sweep ({MANIFEST} missing); run "
                          "tru-dist sweep --config FILE first")
    saved = json.loads(path.read_text())
    return parse_spec(saved["spec"], source=str(path)), Config.from_dict(saved["config"]), int(saved["max_t"])
