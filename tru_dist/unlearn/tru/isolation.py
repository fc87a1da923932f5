"""TRU component 3: capacity-aware layer isolation and row isolation (DESIGN §5).

*Layer isolation.* For every layer group l (``Backbone.layer_groups()``), with g_f^l, g_r^l
the gradients of the mean forget loss over D_f and of the mean retain loss over an equally
large retain sample (computed ONCE, in a dedicated pass before the first step — see
``tru_dist.unlearn.engine``), the Fisher ratio is

    S_l = mean((g_f^l)²) / (mean((g_r^l)²) + δ),   mean = Σ over l's entries / #entries,

with sums and entry counts all-reduced (``reduce.group_sums``). Groups are taken in
decreasing S_l (ties: forward order) and a group is selected when the selected parameter
count stays ≤ ρ·|θ|; a group that would overflow the budget is skipped and smaller, less
sensitive groups may still fit (greedy by priority). The top group is always kept, even if
it alone exceeds ρ·|θ| (then nothing else is added); otherwise the budget is never exceeded. All
other groups are frozen (their gradients are dropped, so Adam leaves them untouched).

*Row isolation.* In the row-indexed embedding tables (``Backbone.row_tables()``), only rows
of users/items within ``row_hops`` hops of D_f on the ORIGINAL train graph (retained ∪
forget train pairs) receive updates:

    hop 1: U_1 = users of D_f,            I_1 = items of D_f;
    hop h: U_h = U_{h−1} ∪ users(I_{h−1}), I_h = I_{h−1} ∪ items(U_{h−1}).

``row_hops ≤ 0`` disables row isolation (every row may move).

*Retained item rows* (``isolation.retained_item_rows: false``, MGCN's default): of those items,
only the ones with no retained train pair may move,

    I_move = I_h ∩ {i : deg_{D_r}(i) = 0},

(``_Loop.items_in_use`` in :mod:`tru_dist.unlearn.engine`), so an interactions deletion moves
its users' rows only (an item row serves every user who ranks the item, a user row only that
user's list) while an items deletion still moves the deleted items' own rows. Measured on
tuning seeds 100–102, MGCN interactions 5%: on Scientific retrain_distance 0.058 → 0.056 and
top-20 Jaccard with Retrain 0.771 → 0.769 (a tie); on sparse synthetic data with one modality
(2,000 users, 7 interactions each) 0.050 → 0.050 and Jaccard 0.830 → 0.846 — above `noop`'s
0.840, where moving the items' rows had left it below. On MIG-GT it is not used: its fixed
budget there may select ``item_emb`` alone, and then nothing would move.

*Cold items' users* (``isolation.cold_item_user_rows: false``, an option): a deleted pair whose
item is cold moves through the item's row alone, so the users all of whose deleted pairs are on
cold items keep their rows (:func:`cold_only_users`):

    U_move = U_h − {u ∈ users(D_f) : ∀ (u, i) ∈ D_f, deg_{D_r}(i) = 0}.

It makes the adaptive budget (``mass``) safe on items deletions, where that budget may add
``user_emb`` to ``item_emb`` (MIG-GT items 1%, tuning seed 102: retrain_distance 0.390 → 0.440,
recall 0.963 → 0.913 × Retrain's; with the rule, the fixed budget's update on all six seeds).
MIG-GT with both was closer to Retrain on Scientific's interactions tuning seeds but farther on
dense synthetic data, so neither is its default (measurements: the README, Unlearn item 3).

*Cold items' rows* (``isolation.free_cold_item_rows``, MIG-GT's default): an item table the
budget left frozen is opened for D_f's cold items' rows alone (:func:`cold_row_groups`),

    I_move = I_h ∩ {i : deg_{D_r}(i) = 0}:

no retained pair trains those rows, so they hold none of D_r's capacity. Seen first on an items
deletion whose fixed budget chose ``user_emb`` (MIG-GT items 1%, one of five freshly trained
reporting originals: recall 0.879 × Retrain's, the deleted items' users moved instead of the
items). Chosen on MIG-GT interactions 5%, where ρ picks ``user_emb`` alone and 1–6 items per
deletion go cold: Scientific tuning seeds 100–102, retrain_distance 0.0665 / 0.0923 / 0.0489 →
0.0644 / 0.0846 / 0.0489 and top-20 Jaccard with Retrain up on all three; no change where the
budget already picks ``item_emb`` (both synthetic sets' tuning seeds, MGCN). Read once on
reporting seeds 0–4 afterwards: 0.065 → 0.062 on average (the README, Unlearn item 3).
"""

from __future__ import annotations

import numpy as np


def fisher_ratios(
    fisher_f_sum: dict[str, float],
    fisher_r_sum: dict[str, float],
    counts: dict[str, float],
    delta: float,
) -> dict[str, float]:
    """S_l = (Σ(g_f^l)²/n_l) / (Σ(g_r^l)²/n_l + δ)."""
    out = {}
    for name, n in counts.items():
        n = max(float(n), 1.0)
        out[name] = (fisher_f_sum[name] / n) / (fisher_r_sum[name] / n + delta)
    return out


def decide_isolation(
    fisher_f_sum: dict[str, float],
    fisher_r_sum: dict[str, float],
    counts: dict[str, float],
    param_counts: dict[str, float],
    budget: float,
    delta: float,
) -> tuple[list[str], float]:
    """Groups to update (in decreasing S_l) and their share of all parameters.

    Greedy under the budget ρ·|θ|; the top group always kept (the only way to exceed it).
    ``counts`` are the entry counts behind the means; ``param_counts`` the sizes charged to
    the budget (the same numbers for whole-tensor groups).
    """
    scores = fisher_ratios(fisher_f_sum, fisher_r_sum, counts, delta)
    order = sorted(scores, key=lambda name: -scores[name])  # stable: ties keep forward order
    total = float(sum(param_counts.values()))
    limit = budget * total
    if not order:
        return [], 0.0
    chosen = [order[0]]  # the most deletion-sensitive group is always updated
    used = float(param_counts[order[0]])
    for name in order[1:]:
        size = float(param_counts[name])
        if used + size <= limit:
            chosen.append(name)
            used += size
    return chosen, (used / total if total > 0 else 0.0)


def decide_isolation_by_mass(
    fisher_f_sum: dict[str, float],
    fisher_r_sum: dict[str, float],
    counts: dict[str, float],
    param_counts: dict[str, float],
    mass: float,
    delta: float,
) -> tuple[list[str], float]:
    """The groups holding ``mass`` of the forget Fisher mass, largest first.

    The budget adapts to how concentrated the deletion's signal is: with M_l = Σ(g_f^l)² the
    forget Fisher mass of group l, take groups in decreasing M_l (ties: decreasing S_l) and
    stop at the first prefix with Σ_chosen M_l ≥ mass·Σ_l M_l. A deletion whose gradient sits
    in a few groups updates only those; a diffuse one updates more. Returns (groups,
    parameter share).
    """
    scores = fisher_ratios(fisher_f_sum, fisher_r_sum, counts, delta)
    order = sorted(scores, key=lambda name: (-fisher_f_sum[name], -scores[name]))
    total_mass = float(sum(fisher_f_sum[n] for n in order))
    total = float(sum(param_counts.values()))
    chosen: list[str] = []
    held = 0.0
    for name in order:
        chosen.append(name)
        held += float(fisher_f_sum[name])
        if held >= mass * total_mass:
            break
    used = float(sum(param_counts[n] for n in chosen))
    return chosen, (used / total if total > 0 else 0.0)


def hop_masks(
    forget_users: np.ndarray,
    forget_items: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    hops: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(user_mask, item_mask): entities within ``hops`` hops of D_f on the graph (users, items).

    ``users``/``items`` are the ORIGINAL train edges (global ids). ``hops ≤ 0`` → all True.
    """
    if hops <= 0:
        return np.ones(n_users, dtype=bool), np.ones(n_items, dtype=bool)
    user_mask = np.zeros(n_users, dtype=bool)
    item_mask = np.zeros(n_items, dtype=bool)
    user_mask[np.asarray(forget_users, dtype=np.int64)] = True
    item_mask[np.asarray(forget_items, dtype=np.int64)] = True
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    for _ in range(hops - 1):
        new_items = np.bincount(items[user_mask[users]], minlength=n_items) > 0
        new_users = np.bincount(users[item_mask[items]], minlength=n_users) > 0
        user_mask |= new_users
        item_mask |= new_items
    return user_mask, item_mask


def cold_only_users(forget_users: np.ndarray, forget_items: np.ndarray, items_in_use: np.ndarray,
                    n_users: int) -> np.ndarray:
    """Mask of the users of D_f all of whose deleted pairs are on cold items (``items_in_use``
    False: no retained train pair uses the item):

        U_cold = {u ∈ users(D_f) : ∀ (u, i) ∈ D_f, deg_{D_r}(i) = 0}.

    A cold item's row is read by no retained list, so its pairs can move through it alone;
    ``isolation.cold_item_user_rows: false`` keeps these users' rows (their lists) frozen."""
    fu = np.asarray(forget_users, dtype=np.int64)
    warm = np.asarray(items_in_use, dtype=bool)[np.asarray(forget_items, dtype=np.int64)]
    mask = np.zeros(n_users, dtype=bool)
    mask[fu] = True
    mask[fu[warm]] = False
    return mask


def movable_groups(chosen: list[str], row_kinds: dict[str, str], free_rows: dict[str, int]) -> list[str]:
    """The chosen groups an update can still move: a dense group always, a row table
    (``row_kinds[name]`` = ``"user"`` / ``"item"``) only when some of its rows are free
    (``free_rows[kind]`` > 0). Empty means the update cannot change the model — e.g. an items
    deletion whose budget chose ``user_emb`` alone with ``cold_item_user_rows: false``."""
    return [n for n in chosen if n not in row_kinds or free_rows.get(row_kinds[n], 0) > 0]


def cold_row_groups(chosen: list[str], candidates: dict[str, list], item_table_ids: set[int]) -> list[str]:
    """With ``isolation.free_cold_item_rows``: the candidate groups made only of item row tables
    that the budget left frozen — opened for D_f's cold items' rows alone,

        I_move(t) = I_h ∩ {i : deg_{D_r}(i) = 0}   for every such table t.

    A row no retained pair trains holds none of D_r's capacity (its retain Fisher is only that of
    a negative), so freezing it protects nothing, while it is where an items deletion's signal
    lives: an items deletion whose fixed budget chose ``user_emb`` moved the deleted items' users
    instead of the items."""
    return [n for n, ps in candidates.items()
            if n not in chosen and ps and all(id(p) in item_table_ids for p in ps)]
