"""Ray Tune sweeps of TRU's hyperparameters across unlearning regimes.

The only package (with ``tru_dist.distributed.launch``) that imports Ray, and only through
:mod:`.adapter`; every other module here runs without Ray.

* :mod:`.spec` — the sweep file (``configs/sweeps/*.yaml``), strict schema;
* :mod:`.space` — search space over ``unlearn.*`` keys, validated against the config;
* :mod:`.context` — originals, Retrain, reverse_bpr per regime/seed, trained once in the driver;
* :mod:`.epochs` — TRU's state after e epochs (exact), for per-epoch reports;
* :mod:`.objective` — valid-only metrics and the trade-off score ASHA maximises;
* :mod:`.trainable` — the Tune trainable (``tru_trainable``);
* :mod:`.sweep` — ``run_sweep`` (``tru-dist sweep``), one Tune experiment per regime, resume;
* :mod:`.select`, :mod:`.plots`, :mod:`.report` — Pareto fronts, best and shared configs, the
  once-only test re-evaluation, ``report.md`` (``tru-dist report sweep``);
* :mod:`.adapter` — every Ray Tune call.
"""
