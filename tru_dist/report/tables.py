"""Markdown tables for comparison results (one row per method, mean ± std over seeds)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(value, std=None, digits: int = 4) -> str:
    """``0.1234 ± 0.0012``; '—' for missing/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int | float):
        text = f"{value:.{digits}f}"
        if std is not None and not (isinstance(std, float) and math.isnan(std)):
            text += f" ± {std:.{digits}f}"
        return text
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(methods: dict, k: int = 20) -> str:
    """Utility, forgetting, agreement with Retrain and time per method."""
    header = ["method", f"recall@{k}", f"ndcg@{k}", f"forget hit@{k}", f"jaccard@{k} vs retrain",
              "forget-rank spearman", "seconds", "speedup vs retrain"]
    rows = []
    for name, m in methods.items():
        test, std = m.get("test", {}), m.get("test_std", {})
        forget, fstd = m.get("forget", {}), m.get("forget_std", {})
        agree = m.get("agreement", {})
        rows.append([
            name,
            fmt(test.get(f"recall@{k}"), std.get(f"recall@{k}")),
            fmt(test.get(f"ndcg@{k}"), std.get(f"ndcg@{k}")),
            fmt(forget.get(f"hit@{k}"), fstd.get(f"hit@{k}")),
            fmt(agree.get(f"jaccard@{k}")),
            fmt(agree.get("forget_rank_spearman")),
            fmt(m.get("seconds"), digits=2),
            fmt(m.get("speedup_vs_retrain"), digits=1),
        ])
    return markdown_table(header, rows)


def audit_table(methods: dict) -> str:
    """Membership-inference AUCs and backdoor figures per method (where audited)."""
    header = ["method", "pair MIA AUC", "95% CI", "user MIA AUC", "backdoor ASR@20", "removal ratio"]
    rows = []
    for name, m in methods.items():
        mia, umia, bd = m.get("mia", {}), m.get("user_mia", {}), m.get("backdoor", {})
        if not (mia or umia or bd):
            continue
        ci = mia.get("ci")
        rows.append([
            name,
            fmt(mia.get("auc"), m.get("mia_std", {}).get("auc")),
            f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "—",
            fmt(umia.get("auc"), m.get("user_mia_std", {}).get("auc")),
            fmt(bd.get("asr@20"), m.get("backdoor_std", {}).get("asr@20")),
            fmt(bd.get("removal_ratio"), m.get("backdoor_std", {}).get("removal_ratio"), digits=3),
        ])
    return markdown_table(header, rows) if rows else ""
