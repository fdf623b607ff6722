"""The local AMS receiver: a real SOAP-over-HTTP server for the demo and the tests.

`receiver.app` (WSGI application), `receiver.store` (SQLite), `receiver.server` (process, thread,
subprocess). Names are imported lazily so that `python -m receiver.server` runs cleanly.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ReceiverApp": "receiver.app",
    "ReceiverFault": "receiver.app",
    "ReceiverStore": "receiver.store",
    "ReceiverHandle": "receiver.server",
    "ReceiverProcess": "receiver.server",
    "start_in_thread": "receiver.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'receiver' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
