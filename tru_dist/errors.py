"""User-facing errors.

Every error a user can cause (bad files, unknown ids, wrong config keys) is raised as a
:class:`TruDistError` subclass whose message is one line naming what is wrong and how to
fix it. The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
"""


class TruDistError(Exception):
    """Base class for errors caused by user input; the message is shown verbatim."""


class DataError(TruDistError):
    """A data file is malformed: the message names the file, the row and the fix."""


class ConfigError(TruDistError):
    """A configuration key or value is invalid."""


class RequestError(TruDistError):
    """A deletion request is invalid (unknown ids, duplicates, empty set)."""


class PlanError(TruDistError):
    """A distributed plan does not fit the workers; the message says what would fix it."""


class TrainingError(TruDistError):
    """Training cannot go on (e.g. the loss is NaN/inf): the message names the epoch and the fix."""
