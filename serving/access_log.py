"""BentoML's access log, written by a thread of its own instead of the event loop.

BentoML logs one line per request (`bentoml.access`) through a `StreamHandler`
on stdout: the format and the `write` + `flush` ran in the event loop, ahead
of the next request, and took about an eighth of the loop's time per request
under load (py-spy, `benchmarks/serving.py` at concurrency 32). `offload`
keeps the lines and their order: the handler's filters still run where the
request runs (BentoML's `TraceRecordFilter` reads the request's trace context
there), and a writer thread formats them with the same formatter and writes
them to the same stream. The writer wakes every `POLL_S` and writes what
arrived in one call, rather than being woken once per request (a thread switch
and a system call per line on a busy event loop).
"""

from __future__ import annotations

import logging
import queue
import threading
from logging.handlers import QueueHandler
from typing import TextIO

ACCESS_LOGGER = "bentoml.access"
POLL_S = 0.05
"""How often the writer thread writes what was logged since (at most this late)."""


class LineWriter:
    """A thread that formats queued records and writes them in bursts, every `POLL_S`.

    Args:
        records: where the records arrive.
        stream: where the lines go (flushed after each burst).
        formatter: makes a line of a record.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        stream: TextIO,
        formatter: logging.Formatter,
    ) -> None:
        self.records, self.stream, self.formatter = records, stream, formatter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log-writer", daemon=True)

    def start(self) -> None:
        """Start writing."""
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued and stop."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._write()
        self._write()

    def _write(self) -> None:
        lines = []
        while True:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                break
            try:
                lines.append(self.formatter.format(record) + "\n")
            except Exception:  # a record that cannot be formatted: logging's own report
                logging.Handler().handleError(record)
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # the stream is gone (closed at exit)
                pass


class _Enqueue(QueueHandler):
    """Puts the record on the queue as it is: the listener's handler formats it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def offload(name: str = ACCESS_LOGGER) -> LineWriter | None:
    """Route logger `name`'s records to its stream through a queue and a writer thread.

    The logger's effective handler (its own, or its ancestors' up to the first
    that does not propagate: BentoML's one `StreamHandler`) is replaced, for this
    logger only, by a queue: the handler's level and filters apply on the
    queue's side, its formatter and stream on the writer's. Call `stop()` on the
    result at shutdown to write what is queued.

    Returns:
        The started writer; None when the records do not go to exactly one plain
        `StreamHandler` (nothing changes then).
    """
    logger = logging.getLogger(name)
    handlers = _effective_handlers(logger)
    if len(handlers) != 1 or type(handlers[0]) is not logging.StreamHandler:
        return None
    handler: logging.StreamHandler[TextIO] = handlers[0]
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue = _Enqueue(records)
    enqueue.setLevel(handler.level)
    for record_filter in handler.filters:
        enqueue.addFilter(record_filter)
    writer = LineWriter(records, handler.stream, handler.formatter or logging.Formatter())
    writer.start()
    logger.handlers = [enqueue]
    logger.propagate = False
    return writer


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


__all__ = ["ACCESS_LOGGER", "POLL_S", "LineWriter", "offload"]
