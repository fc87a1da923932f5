"""Unlearning: the method contract and registry (``base``), the shared reverse-update loop
(``engine``), the methods (``retrain``, ``reverse_bpr``, ``grad_ascent``, ``finetune``,
``sisa``, ``tru``), the deletion ledger (``ledger``) and forgetting metrics (``metrics``).

    from tru_dist.unlearn import get_method
    result = get_method("tru").unlearn(model, graph_after, data_after, forget, cfg)

The subpackage is also the API function: ``tru_dist.unlearn(run, requests=..., method=...)``
calls :func:`tru_dist.api.unlearn` (see :mod:`tru_dist._callable`).
"""

from tru_dist._callable import make_callable
from tru_dist.unlearn.base import Method, UnlearnResult, get_method, method_names

__all__ = ["Method", "UnlearnResult", "get_method", "method_names"]

make_callable(__name__, "unlearn")
