"""Named failure points between the delivery's durable steps, for the model-based tests.

A crash between two writes of the state store is what exactly-once delivery must survive. The
pipeline calls `point(name)` at each such place; normally it does nothing. A test arms a point, and
the next pass through it raises: `InjectedCrash` (a BaseException, so no `except Exception` in the
pipeline can soften it: it behaves like the process dying there) or the error the test chose (e.g.
an OSError for a full disk). Nothing here reads the environment: only code can arm a point.
"""

from __future__ import annotations

import threading

#: Every named point, in the order a batch passes them.
POINTS = (
    "prepare.staged",          # payload encrypted, not yet stored (it is stored with the batch row)
    "state.discard",           # unsent batches read, not yet deleted
    "deliver.before_post",     # batch marked sent, request not yet posted
    "deliver.after_reply",     # receipt in hand, nothing stored yet
    "deliver.receipt_staged",  # receipt bytes staged, ledger not yet updated
    "state.apply_receipt",     # inside the ledger transaction (rolled back)
    "deliver.acknowledged",    # ledger updated, archive not yet written
    "archive.write",           # writing the archive folder
    "archive.written",         # archive written, batch not yet marked archived
)


class InjectedCrash(BaseException):  # noqa: N818 - it stands for a crash, not an error to handle
    """The process 'dies' at a named point."""


_armed: dict[str, BaseException | type[BaseException]] = {}
_lock = threading.Lock()


def arm(name: str, error: BaseException | type[BaseException] = InjectedCrash) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown failure point {name!r}; known: {', '.join(POINTS)}")
    with _lock:
        _armed[name] = error


def disarm() -> None:
    with _lock:
        _armed.clear()


def point(name: str) -> None:
    """Raise the armed error once at `name` (then the point is disarmed)."""
    if not _armed:
        return
    with _lock:
        error = _armed.pop(name, None)
    if error is None:
        return
    if isinstance(error, type):
        raise error(f"injected at {name}")
    raise error
