"""The exceptions megapairs raises, in one place.

``Error`` and ``FormatError`` are defined by the C extension, so that the core and the Python
layer raise the same types; the others are Python's and subclass the built-in a caller would
catch anyway (a bad setting is a ``ValueError``, a full disk an ``OSError``).

>>> import megapairs as mp
>>> try:
...     mp.CLIP.from_pretrained("/no/such/model")
... except FileNotFoundError as e:
...     print(e)
no such directory: '/no/such/model'
"""

from __future__ import annotations

from ._loader import load_core as _load_core

_core = _load_core()

#: Base of the errors the core reports (RuntimeError): out of memory, a oneDNN failure, a
#: stage that produced nothing.
Error = _core.Error
#: Bytes that do not hold what they claim (Error, ValueError): a malformed safetensors file,
#: JPEG, vocabulary, config or record; the message names the file and what is wrong.
FormatError = _core.FormatError

__all__ = ["BackendError", "ConfigError", "DiskFullError", "Error", "FormatError", "OutputError", "StageFailed"]


class ConfigError(ValueError):
    """A setting that is missing, of the wrong type or out of range; the message names it."""


class StageFailed(Error):
    """A stage ran but produced nothing usable (every image failed, no pair was mined, every
    pair failed annotation). The message says what to look at."""


class DiskFullError(OSError):
    """The disk filled up while writing; free space and run the same command to resume."""


class OutputError(ValueError):
    """A model answer that cannot be used; ``str(error)`` is the reason recorded."""


class BackendError(RuntimeError):
    """A request that failed for good.

    Attributes
    ----------
    reason : str
        What went wrong, as recorded in the journal (``"HTTP 500: ... (gave up after 6 attempts)"``).
    status : int or None
        The last HTTP status, if there was one.
    fatal : bool
        True when no later request can succeed either (HTTP 401, 403, 404): the run stops.
    """

    def __init__(self, reason: str, status: int | None = None, fatal: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.fatal = fatal
