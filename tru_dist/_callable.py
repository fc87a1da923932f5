"""Make a subpackage callable as the API function of the same name.

``tru_dist.train`` and ``tru_dist.unlearn`` are both subpackages (the trainer, the unlearning
methods) and names of the Python API (:func:`tru_dist.api.train`, :func:`tru_dist.api.unlearn`).
Python sets ``tru_dist.train`` to the subpackage whenever ``tru_dist.train.<module>`` is first
imported, so a plain function of that name on the package would be silently replaced. Instead
the subpackage itself is callable: its module class gets a ``__call__`` that forwards to the API
function (imported on the first call, so importing the subpackage stays as light as before),
and a ``__signature__`` for ``help``/``inspect``. Every import form keeps working
(``import tru_dist.train.trainer as t``, ``from tru_dist.train import trainer``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any


def make_callable(module_name: str, api_name: str) -> None:
    """Turn ``sys.modules[module_name]`` into a module that calls ``tru_dist.api.<api_name>``."""

    def target() -> Any:
        return getattr(importlib.import_module("tru_dist.api"), api_name)

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return target()(*args, **kwargs)

        @property
        def __signature__(self) -> inspect.Signature:
            return inspect.signature(target())

    sys.modules[module_name].__class__ = CallablePackage
