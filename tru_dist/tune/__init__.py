"""Ray Tune sweeps of the approximate unlearning methods' hyperparameters across regimes.

reverse_bpr, grad_ascent, finetune and TRU are tuned by the same machinery with the same
budget (one experiment per method and regime), on tuning seeds (100+) and valid data only;
the best configuration per method and regime is written for ``tru-dist compare --tuned``.

The only package (with ``tru_dist.distributed.launch``) that imports Ray, and only through
:mod:`.adapter`; every other module here runs without Ray.

* :mod:`.spec` — the sweep file (``configs/sweeps/*.yaml``), strict schema, methods and seeds;
* :mod:`.space` — search space over ``unlearn.*`` keys, validated against the config;
* :mod:`.context` — originals, Retrain, reverse_bpr per regime/seed, trained once in the driver;
* :mod:`.epochs` — a method's state after e epochs (exact), for per-epoch reports;
* :mod:`.objective` — valid-only metrics and the trade-off score ASHA maximises;
* :mod:`.trainable` — the Tune trainables (``method_trainable``; at W > 1 ``workers_trainable``,
  a Ray Train run per trial, or ``group_trainable``, on reused worker groups);
* :mod:`.shard_trial` — a W > 1 trial's epochs on one rank's shard of the data;
* :mod:`.group_trials` — worker groups started once per sweep that run trials epoch by epoch;
* :mod:`.sweep` — ``run_sweep`` (``tru-dist sweep``), one Tune experiment per method and regime, resume;
* :mod:`.results` — an experiment's rows and its best configuration (valid only);
* :mod:`.export` — ``<sweep>/tuned/<method>-<regime>.yaml`` and what tuning cost;
* :mod:`.select`, :mod:`.plots`, :mod:`.report` — Pareto fronts, best and shared configs, the
  once-only test re-evaluation, ``report.md`` (``tru-dist report sweep``);
* :mod:`.adapter` — every Ray Tune call.
"""
