"""The annotation journal: one JSON object a line, appended as each pair finishes.

Line 1 is a header, ``{"event": "header", "format": "megapairs.annotate.journal/1",
"settings": {...}, ...}``, holding every setting that shapes an answer (prompt version and
digest, models, seed, word budget, ...). Each further line is one pair's outcome:

- ``{"event": "done", "q_img", "t_img", "hns", "q_text", "description", "word_budget",
  "demonstrations", "mllm_calls", "llm_calls", "time"}``
- ``{"event": "failed", "q_img", "t_img", "stage", "reason", "status", "time"}`` with
  ``stage`` one of ``"image"``, ``"mllm"``, ``"llm"``.

Crash safety: each line is written with one ``write`` and flushed (and, with ``fsync=True``,
synced), so a killed process loses at most the line being written. A last line without
its newline is such a torn write: readers ignore it and :class:`Journal` cuts it off before
appending. A malformed line anywhere else is an error. A ``done`` outcome is final; of
several ``failed`` lines for one pair the last counts. An exclusive ``flock`` keeps two runs
from appending to one journal at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..limits import loads_json

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock
    fcntl = None

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["JOURNAL_FORMAT", "Journal", "JournalState", "read_journal"]

logger = logging.getLogger("megapairs")

JOURNAL_FORMAT = "megapairs.annotate.journal/1"

PairKey = tuple[str, str]


@dataclass
class JournalState:
    """What a journal holds.

    Attributes
    ----------
    header : dict or None
        None for a missing or empty journal.
    done, failed : dict of (q_img, t_img) -> entry
        The outcome of each pair (a pair is in at most one of the two).
    lines : int
        Complete lines, header included.
    torn_tail : bool
        Whether the file ends in an incomplete line (a write cut short by a crash).
    """

    header: dict | None = None
    done: dict[PairKey, dict] = field(default_factory=dict)
    failed: dict[PairKey, dict] = field(default_factory=dict)
    lines: int = 0
    torn_tail: bool = False


def _parse(path: Path) -> tuple[JournalState, int]:
    """The state and the byte length of the complete lines."""
    state = JournalState()
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    state.torn_tail = end < len(data)
    for lineno, raw in enumerate(data[:end].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = loads_json(raw, f"{path}:{lineno}")
            event = entry["event"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}:{lineno}: not a journal entry: {raw[:80]!r}") from None
        state.lines += 1
        if event == "header":
            if state.header is not None:
                raise ValueError(f"{path}:{lineno}: a second header")
            if entry.get("format") != JOURNAL_FORMAT:
                raise ValueError(f"{path}: format {entry.get('format')!r}, expected {JOURNAL_FORMAT!r}")
            state.header = entry
            continue
        if state.header is None:
            raise ValueError(f"{path}:{lineno}: an entry before the header")
        try:
            key = (entry["q_img"], entry["t_img"])
        except KeyError:
            raise ValueError(f"{path}:{lineno}: entry without q_img/t_img") from None
        if event == "done":
            state.done[key] = entry
            state.failed.pop(key, None)
        elif event == "failed":
            if key not in state.done:
                state.failed[key] = entry
        else:
            raise ValueError(f"{path}:{lineno}: unknown event {event!r}")
    return state, end


def read_journal(path: str | os.PathLike) -> JournalState:
    """Read a journal without changing it (a torn last line is ignored).

    Raises
    ------
    ValueError
        Naming ``file:line`` for a malformed line other than the last.
    """
    return _parse(Path(path))[0]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Journal:
    """An open journal for appending (see the module docstring).

    Opening reads the existing entries into :attr:`state`, checks that the header's
    ``settings`` equal ``settings`` (a journal must not mix answers made differently),
    removes a torn last line, and writes a header if the file is new or empty.

    Raises
    ------
    ValueError
        If the journal was made with other settings (naming the file and the settings).
    RuntimeError
        If another process has it open.
    """

    def __init__(self, path: str | os.PathLike, settings: dict, extra_header: dict | None = None,
                 fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 (held open for the whole run)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RuntimeError(f"journal {self.path} is in use by another run") from None
            self.state, end = _parse(self.path)
            if self.state.torn_tail:
                logger.warning("journal %s: dropping an incomplete last line (an interrupted write)", self.path)
                self._file.truncate(end)
            settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
            if self.state.header is None:
                if end:  # only blank lines
                    self._file.truncate(0)
                header = {"event": "header", "format": JOURNAL_FORMAT, "created": _now(), "settings": settings,
                          **(extra_header or {})}
                self._write(header)
                self.state.header = header
                self.state.lines = 1
            elif self.state.header.get("settings") != settings:
                old = self.state.header.get("settings") or {}
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                changes = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
                raise ValueError(f"journal {self.path} was written with other settings ({changes}); "
                                 "use a new journal file for new settings")
        except BaseException:
            self._file.close()
            raise

    def _write(self, entry: dict) -> None:
        self._file.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def append(self, entry: dict) -> None:
        """Append one outcome (``event`` "done" or "failed") and flush it."""
        entry = {**entry, "time": _now()}
        self._write(entry)
        key = (entry["q_img"], entry["t_img"])
        if entry["event"] == "done":
            self.state.done[key] = entry
            self.state.failed.pop(key, None)
        elif key not in self.state.done:  # as a re-read would see it: "done" is final
            self.state.failed[key] = entry
        self.state.lines += 1

    def close(self) -> None:
        """Release the lock and close the file."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
