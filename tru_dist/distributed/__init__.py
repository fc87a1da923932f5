"""The distributed runtime: launching W workers (Ray Train or local processes), sharding,
the per-worker tasks and the commands at any W. It sits above ``train``/``unlearn``/``compare``
(it runs them); the collectives they use are the ground-floor :mod:`tru_dist.comm`.

There is no coordinator process and no broadcast of decisions: every TRU decision (gate
P_i and convergence, branch scales α_b, isolated layer groups) is a deterministic function
of all-reduced sums, replicated on every rank. After an all-reduce every rank holds the same
bytes (gloo and NCCL reduce each chunk once and copy the result to every rank), so ranks
running the same code on the same device type decide alike (tests/test_dist_equivalence.py
checks the two ranks' decisions are equal).
"""
