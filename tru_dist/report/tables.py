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
    """Utility, forgetting at several cut-offs, agreement with Retrain, retrain_distance and
    time per method; ``±`` is the 95% CI half-width over seeds (std where no CI is stored)."""
    header = ["method", f"recall@{k}", f"ndcg@{k}", "forget hit@10", f"forget hit@{k}", "forget hit@50",
              "rank pct", "KS vs retrain", f"jaccard@{k} vs retrain", "retrain_distance", "seconds",
              "speedup vs retrain", "amortised (100 req.)"]
    rows = []
    for name, m in methods.items():
        test, tci = m.get("test", {}), m.get("test_ci", m.get("test_std", {}))
        forget, fci = m.get("forget", {}), m.get("forget_ci", m.get("forget_std", {}))
        agree, aci = m.get("agreement", {}), m.get("agreement_ci", {})
        rows.append([
            name,
            fmt(test.get(f"recall@{k}"), tci.get(f"recall@{k}")),
            fmt(test.get(f"ndcg@{k}"), tci.get(f"ndcg@{k}")),
            fmt(forget.get("hit@10"), fci.get("hit@10"), digits=3),
            fmt(forget.get(f"hit@{k}"), fci.get(f"hit@{k}"), digits=3),
            fmt(forget.get("hit@50"), fci.get("hit@50"), digits=3),
            fmt(forget.get("rank_pct"), digits=3),
            fmt(agree.get("forget_rank_ks"), aci.get("forget_rank_ks"), digits=3),
            fmt(agree.get(f"jaccard@{k}"), aci.get(f"jaccard@{k}"), digits=3),
            fmt(m.get("retrain_distance"), m.get("retrain_distance_ci"), digits=3),
            fmt(m.get("seconds"), digits=2),
            fmt(m.get("speedup_vs_retrain"), digits=1),
            fmt(m.get("speedup_amortised_100"), digits=1),
        ])
    return markdown_table(header, rows)


def paired_table(paired: dict) -> str:
    """TRU − method on retrain_distance, per pair: mean difference, 95% CI, verdict, and the
    secondary distribution-free reading (seeds where TRU is lower / higher, sign-test p)."""
    rows = []
    for tru_name, others in paired.items():
        for other, d in others.items():
            lo, hi = d.get("ci") or [None, None]
            ci = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else "—"
            signs = f"{d['lower_on']} / {d['higher_on']}" if d.get("lower_on") is not None else "—"
            sign_p = f"{d['sign_p']:.3f}" if d.get("sign_p") is not None else "—"
            rows.append([tru_name, other, f"{d['diff_mean']:+.4f}", ci, str(d.get("n")),
                         d.get("verdict", ""), signs, sign_p])
    if not rows:
        return ""
    header = ["TRU variant", "vs", "mean Δ retrain_distance", "95% CI", "seeds", "verdict (t-CI)",
              "TRU lower / higher on", "sign-test p"]
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
            f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "—",
            fmt(umia.get("auc"), m.get("user_mia_std", {}).get("auc")),
            fmt(bd.get("asr@20"), m.get("backdoor_std", {}).get("asr@20")),
            fmt(bd.get("removal_ratio"), m.get("backdoor_std", {}).get("removal_ratio"), digits=3),
        ])
    return markdown_table(header, rows) if rows else ""
