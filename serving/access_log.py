"""BentoML's access log, written by a thread of its own instead of the event loop.

BentoML logs one line per request (`bentoml.access`) through a `StreamHandler`
on stdout: the format and the `write` + `flush` ran in the event loop, ahead
of the next request, and took about an eighth of the loop's time per request
under load (py-spy, `benchmarks/serving.py` at concurrency 32). `offload`
keeps the lines and their order: the handler's filters still run where the
request runs (BentoML's `TraceRecordFilter` reads the request's trace context
there), and a `logging.handlers.QueueListener` formats and writes them with the
same formatter to the same stream.
"""

from __future__ import annotations

import logging
import queue
from logging.handlers import QueueHandler, QueueListener

ACCESS_LOGGER = "bentoml.access"


class _Enqueue(QueueHandler):
    """Puts the record on the queue as it is: the listener's handler formats it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def offload(name: str = ACCESS_LOGGER) -> QueueListener | None:
    """Route logger `name`'s records to its handlers through a queue and a writer thread.

    The logger's effective stream handlers (its own, or its ancestors' up to the
    first that does not propagate) are replaced, for this logger only, by a
    queue: their filters run on the queue's side, their formatter and stream on
    the writer's. Call `stop()` on the result at shutdown to write what is queued.

    Returns:
        The started listener; None when the logger has no stream handler to move
        (nothing changes then).
    """
    logger = logging.getLogger(name)
    handlers = _effective_handlers(logger)
    streams = [h for h in handlers if type(h) is logging.StreamHandler]
    if not streams or len(streams) != len(handlers):
        return None
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writers = []
    for handler in streams:
        writer = logging.StreamHandler(handler.stream)
        writer.setFormatter(handler.formatter)
        writer.setLevel(handler.level)
        writers.append(writer)
    enqueue = _Enqueue(records)
    for handler in streams:
        for record_filter in handler.filters:
            enqueue.addFilter(record_filter)
    listener = QueueListener(records, *writers, respect_handler_level=True)
    listener.start()
    logger.handlers = [enqueue]
    logger.propagate = False
    return listener


def _effective_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of `logger` reaches (`Logger.callHandlers`' walk)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return found


__all__ = ["ACCESS_LOGGER", "offload"]
