"""TRU (Targeted Reverse Update), DESIGN §5: ``gate`` (ranking fusion gate), ``scaling``
(branch-wise modality scaling), ``isolation`` (capacity-aware layer + row isolation), composed
in ``tru``. The pure decision functions every rank calls on the same all-reduced statistics
(replicated, no broadcast: see :mod:`tru_dist.distributed`): :func:`decide_gate`,
:func:`decide_alphas`, :func:`decide_isolation`.
"""

from tru_dist.unlearn.tru.gate import decide_gate
from tru_dist.unlearn.tru.isolation import decide_isolation
from tru_dist.unlearn.tru.scaling import decide_alphas

__all__ = ["decide_alphas", "decide_gate", "decide_isolation"]
