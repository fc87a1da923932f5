"""The data contract: Arrow schemas, MMRec column names and store file names.

Every table tru-dist writes or reads is described here once, so readers, writers and
validators agree on names and types:

* ``INTERACTIONS_SCHEMA`` — ``interactions.parquet`` of a store (one row per unique
  (user, item) pair; ``x_label`` 0 train / 1 valid / 2 test, as in MMRec).
* ``REQUESTS_SCHEMA`` — a deletion-request table (``item_id`` null = every interaction
  of the user).
* ``MMREC_COLUMNS`` — the header of an MMRec ``<name>.inter`` TSV.

:class:`~tru_dist.data.dataset.RecDataset` carries the order of a user's interactions but
not ratings or raw timestamps; writers therefore emit ``rating = 1.0`` (implicit
feedback) and ``timestamp = position in the user's sequence`` (what the shared Amazon
data holds), see :func:`sequence_positions`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

MMREC_COLUMNS: tuple[str, ...] = ("userID", "itemID", "rating", "timestamp", "x_label")
FEATURE_SUFFIX = "_feat.npy"

INTERACTIONS_FILE = "interactions.parquet"
FEATURES_DIR = "item_features"
META_FILE = "META.json"
STORE_FORMAT = "tru-dist-store"
STORE_VERSION = 1

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("rating", pa.float32(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("x_label", pa.int8(), nullable=False),
    ]
)

REQUEST_COLUMNS: tuple[str, ...] = ("request_id", "user_id", "item_id", "reason")
REQUESTS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=True),
        pa.field("reason", pa.string(), nullable=True),
    ]
)

X_LABEL_NAMES = {0: "train", 1: "valid", 2: "test"}


def sequence_positions(users: np.ndarray) -> np.ndarray:
    """Position of each row within its user's rows, in array order (0, 1, 2, ... per user).

    This is the ``timestamp`` written for a dataset that carries only interaction order:
    reading it back and sorting stably by (user, timestamp) restores the same order.
    """
    users = np.asarray(users)
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    return pd.Series(users).groupby(users, sort=False).cumcount().to_numpy(dtype=np.int64)
