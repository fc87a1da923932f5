"""Resolve a ``--data`` argument: a folder on disk or an embedded synthetic spec.

Specs: ``synthetic`` (the demo default, 600 users × 400 items, image+text),
``synthetic:tiny`` (200 × 120, for tests and job smoke runs),
``synthetic:USERSxITEMS`` and ``synthetic:USERSxITEMS:SEED``. Anything else is a path to an
MMRec folder or a tru-dist store (``load_dataset`` decides which). Every worker can
regenerate a synthetic spec deterministically, so synthetic data needs no shared storage.
"""

from __future__ import annotations

import re
from pathlib import Path

from tru_dist.config import is_folder_path
from tru_dist.data.dataset import RecDataset
from tru_dist.errors import DataError

PRESETS = {
    "": dict(n_users=600, n_items=400),
    "tiny": dict(n_users=200, n_items=120, n_clusters=4, modalities={"image": 16, "text": 8},
                 mean_extra_interactions=6),
    "small": dict(n_users=1500, n_items=800),
}


def is_synthetic(spec: str | None) -> bool:
    """True for no data path or a synthetic spec (``synthetic:small``): data regenerated from a seed."""
    return not is_folder_path(spec)


def synthetic_from_spec(spec: str) -> RecDataset:
    from tru_dist.config import SEED_MAX
    from tru_dist.data.synthetic import MIN_ITEMS, MIN_USERS, generate_synthetic

    rest = spec[len("synthetic"):].lstrip(":")
    parts = rest.split(":") if rest else [""]
    seed = 0
    if len(parts) > 2 or (len(parts) == 2 and not re.fullmatch(r"[0-9]+", parts[1])):
        # anything else after the sizes (-1, abc, 1:2, an empty seed) was read as seed 0 silently
        raise DataError(f"synthetic spec '{spec}' has a seed that is not an integer 0..{SEED_MAX}: write "
                        "synthetic:USERSxITEMS[:SEED] or synthetic:tiny[:SEED] (e.g. synthetic:200x120:7)")
    if len(parts) == 2:
        seed = int(parts[1])
        if seed > SEED_MAX:
            raise DataError(f"synthetic spec '{spec}': seed {seed} is above {SEED_MAX}; use 0..{SEED_MAX}")
    head = parts[0]
    if head in PRESETS:
        return generate_synthetic(**PRESETS[head], seed=seed)
    try:
        n_users, n_items = (int(x) for x in head.lower().split("x"))
    except ValueError:
        raise DataError(
            f"unknown synthetic spec '{spec}': use synthetic, synthetic:tiny, synthetic:small or "
            "synthetic:USERSxITEMS[:SEED] (e.g. synthetic:5000x2000)"
        ) from None
    if n_users < MIN_USERS or n_items < MIN_ITEMS:  # the generator raised a raw numpy ValueError
        raise DataError(
            f"synthetic spec '{spec}' asks for {n_users} users x {n_items} items; the generator needs "
            f"at least {MIN_USERS} user and {MIN_ITEMS} items (every user draws {MIN_ITEMS} distinct items): "
            "use e.g. synthetic:200x120"
        )
    return generate_synthetic(n_users=n_users, n_items=n_items, seed=seed)


def open_data(spec: str | Path | None, item_range: tuple[int, int] | None = None) -> RecDataset:
    """The dataset named by ``spec`` (default: the embedded synthetic demo data)."""
    if is_synthetic(None if spec is None else str(spec)):
        data = synthetic_from_spec(str(spec or "synthetic"))
        if item_range is not None:
            lo, hi = item_range
            data = data.with_features({m: f[lo:hi] for m, f in data.features.items()})
        return data
    from tru_dist.data.load import load_dataset

    return load_dataset(spec, item_range=item_range)
