"""Progress of tile tasks, reported to whoever listens (the batch runner's rich progress bars).

Library functions compute their tile tasks with :func:`compute_with_progress` instead of
``dask.compute``. Without a listener it *is* ``dask.compute``. With one (set by :func:`report_progress`),
tasks run on the active Dask distributed client as futures, and the listener is called as each finishes;
with a local scheduler, a dask callback counts the finished tasks instead.

Examples
--------
>>> import dask
>>> seen = []
>>> with report_progress(lambda stage, done, total: seen.append((stage, done, total))):
...     compute_with_progress([dask.delayed(abs)(-1), dask.delayed(abs)(-2)], "demo")
(1, 2)
>>> seen[-1]
('demo', 2, 2)
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

__all__ = ["active_client", "compute_with_progress", "report_progress", "notify_progress"]

Listener = Callable[[str, int, int], None]
_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("chemozone_progress", default=None)


@contextlib.contextmanager
def report_progress(listener: Listener) -> Iterator[None]:
    """Within the block, tile computations call ``listener(stage, done, total)``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def notify_progress(stage: str, done: int, total: int) -> None:
    """Report progress of a loop the library runs itself (e.g. quantification tiles); no-op without a listener."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(stage, done, total)


def active_client():
    """The Dask distributed client that ``dask.compute`` uses here, else None (no client, or a local scheduler set
    in ``dask.config``, as inside a task whose sample runs on one worker)."""
    import dask

    if dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded", "threads", "processes"):
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def compute_with_progress(tasks: Sequence[Any], stage: str) -> tuple:
    """``dask.compute(*tasks)``, reporting each finished task to the current listener (if any)."""
    import dask

    listener = _LISTENER.get()
    if listener is None or not tasks:
        return dask.compute(*tasks)
    total = len(tasks)
    client = active_client()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(list(tasks))
        for done, _ in enumerate(as_completed(futures), 1):
            listener(stage, done, total)
        return tuple(client.gather(futures))
    from dask.callbacks import Callback

    keys = {t.key for t in tasks}
    state = {"done": 0}

    def posttask(key, result, dsk, st, worker_id):
        if key in keys:
            state["done"] += 1
            listener(stage, state["done"], total)

    with Callback(posttask=posttask):
        return dask.compute(*tasks)
