"""Security audits of unlearned models (DESIGN §6).

* :mod:`.mia` — pair-level membership inference (members = deleted train pairs, non-members
  = popularity/user-matched held-out pairs; attacker fitted on the original model).
* :mod:`.user_mia` — user-level membership inference (Zhang et al., CCS'21; shadow model).
* :mod:`.backdoor` — attack success rate of poison targets and the removal ratio.
* :mod:`.features` — the score/rank features the attackers read off a model.
* :mod:`.runner` — ``run_audits`` (used by ``compare``) and ``audit_run`` (``tru-dist audit``).

Submodules are imported on use (scikit-learn is only needed when an audit runs).
"""
