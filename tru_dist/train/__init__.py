"""Training: the BPR trainer (``trainer``), the full-ranking evaluator (``evaluate``), the BPR
sampler, checkpoints and progress reporting.

The subpackage is also the API function: ``tru_dist.train(data=..., model=..., out=...)`` calls
:func:`tru_dist.api.train` (see :mod:`tru_dist._callable` for why a callable package).
"""

from tru_dist._callable import make_callable

make_callable(__name__, "train")
