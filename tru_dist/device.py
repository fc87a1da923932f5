"""Where the model runs, and wall-clock timing that is honest on CUDA.

``train.device`` is ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` and stays as written in the
config (a run trained with ``auto`` on a GPU loads on a CPU machine); it is resolved here,
where graphs and models are built:

* ``auto`` → ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``;
* a bare ``cuda`` → ``cuda:LOCAL_RANK`` when several GPUs are visible (Ray and torchrun
  make one GPU visible per worker, where it is ``cuda:0``);
* ``cuda`` on a machine without CUDA is a one-line :class:`ConfigError`, not a traceback.

CUDA kernels run asynchronously, so a ``time.perf_counter()`` difference around model work
measures the launches, not the work: :func:`synchronize` (a no-op on CPU) is called at both
ends of every timer that measures model work — the trainer's epochs here, and
:class:`tru_dist.timing.Stopwatch` around unlearning.
"""

from __future__ import annotations

import os

import torch

from tru_dist.errors import ConfigError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for a ``train.device`` value (see the module docstring)."""
    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if name == "auto":
        name = "cuda" if cuda_available() else "cpu"
    if name.startswith("cuda"):
        if not cuda_available():
            raise ConfigError(f"train.device={name} but this machine has no usable CUDA device "
                              f"(torch {torch.__version__}, torch.cuda.is_available() is False); use "
                              "--device auto or --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if name == "cuda" and count > 1:
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % count}"
        elif ":" in name and int(name.split(":", 1)[1]) >= count:
            raise ConfigError(f"train.device={name} but only {count} CUDA device(s) are visible; "
                              f"use cuda:0..cuda:{count - 1} or --device auto")
    elif name != "cpu":
        raise ConfigError(f"train.device={name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the queued CUDA work of ``device`` (every CUDA device in use when None);
    a no-op on CPU and when CUDA was never initialised in this process."""
    if device is not None and torch.device(device).type != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)
