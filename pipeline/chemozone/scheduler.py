"""Where a batch run's per-sample tasks execute: a Dask cluster, or this process.

The runner (:mod:`chemozone.run`) decides *what* runs for each sample; this module decides *where*:

* :func:`dask_client`: a client of an existing scheduler (by address) or of a local cluster of processes;
* :func:`map_samples`: ``fn(row, *args)`` for every sample row, as Dask tasks or in process, yielding each
  outcome in completion order;
* :class:`StageError`: a sample's failure. It travels back from the worker as a *value* (see
  :func:`call_safely`), so one failed sample neither logs a worker traceback nor stops the others;
* :func:`progress_bars`, :func:`tile_progress` and :func:`run_log`: what the user sees while it runs
  (rich progress bars on stderr, ``OUT/run.log``).

Nothing here imports Dask, distributed or rich at module level (``chemozone --help`` stays fast).

Examples
--------
>>> def square(row, k):
...     return row["x"] ** k
>>> [(r["sample_id"], v) for r, v in map_samples(None, square, [{"sample_id": "a", "x": 3}], (2,), "demo")]
[('a', 9)]
"""

from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["StageError", "call_safely", "map_samples", "spare_threads", "task_executor", "dask_client", "progress_bars",
           "tile_progress", "run_log"]

log = logging.getLogger("chemozone")


class StageError(Exception):
    """A sample failed in a stage (carries the stage name and a one-line message)."""

    def __init__(self, sample_id: str, stage: str, message: str, tb: str = "") -> None:
        super().__init__(f"sample '{sample_id}' failed in {stage}: {message}")
        self.sample_id, self.stage, self.message, self.tb = sample_id, stage, message, tb

    def __reduce__(self):  # picklable across Dask workers
        return (StageError, (self.sample_id, self.stage, self.message, self.tb))


def call_safely(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; a sample's failure comes back as a value (on a worker: no worker error log, no traceback)."""
    try:
        return fn(*args)
    except StageError as exc:
        return exc


def spare_threads(client, n_tasks: int) -> int:
    """Threads each of ``n_tasks`` concurrent tasks may use without taking a core from another task: the cluster's
    worker threads divided among the tasks (at least 1; 1 in process). A whole section that is alone on a 2-worker
    cluster gets 2; a cohort with more samples than worker threads gets 1 (the workers are already all busy).

    Examples
    --------
    >>> spare_threads(None, 1)
    1
    """
    if client is None or n_tasks < 1:
        return 1
    # n_workers=-1: every worker (distributed reports the first 5 by default)
    total = sum(int(w.get("nthreads", 1)) for w in client.scheduler_info(n_workers=-1)["workers"].values())
    return max(1, total // int(n_tasks))


def map_samples(client, fn: Callable[..., Any], rows: Sequence[dict[str, Any]], args: tuple, label: str
                ) -> Iterator[tuple[dict[str, Any], Any]]:
    """Run ``fn(row, *args)`` for every row, in process (``client=None``) or as Dask tasks.

    Yields ``(row, info or StageError)`` in completion order. Arguments other than plain strings and
    numbers (the config, the cohort's gate tables) are scattered to every worker once.
    """
    if client is None:
        for r in rows:
            try:
                yield r, fn(r, *args)
            except StageError as exc:
                yield r, exc
        return
    from distributed import as_completed

    # hash=False: unique keys, so data scattered for an earlier stage being released cannot race this one
    scattered = [client.scatter(a, broadcast=True, hash=False) if not isinstance(a, (str, int, float)) else a
                 for a in args]
    # a row may be one part of a sample's work (``_part``): its own key
    futures = {client.submit(call_safely, fn, r, *scattered, pure=False,
                             key=f"{label.replace(' ', '-')}-{r['sample_id']}" + (f"-{r['_part']}" if "_part" in r else "")): r
               for r in rows}
    limit = _worker_memory_limit(client)
    for fut in as_completed(futures):
        r = futures[fut]
        try:
            yield r, fut.result()
        except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by its memory limit
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())
            if type(exc).__name__ in LOST_WORKER_ERRORS:
                msg += lost_worker_hint(limit)
            yield r, StageError(r["sample_id"], f"{label} (worker)", msg, traceback.format_exc())


class _DaskExecutor:
    """``submit(fn, *args, **kwargs)`` as Dask tasks; table and array arguments are scattered first (data travels
    to the workers, never inside the task graph: no "Sending large graph" warning), each object once however many
    tasks it goes to (e.g. the sample sheet of every marker's gate fit); small arguments go as they are."""

    def __init__(self, client) -> None:
        self.client = client
        self._scattered: dict[int, Any] = {}  # id(object) -> future, dropped when the object is freed

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        import weakref

        import numpy as np
        import pandas as pd

        def put(a):
            if not isinstance(a, (pd.DataFrame, pd.Series, np.ndarray)):
                return a
            if id(a) not in self._scattered:  # not kept alive here: a per-task table is freed after its submit
                self._scattered[id(a)] = self.client.scatter(a, hash=False)
                weakref.finalize(a, self._scattered.pop, id(a), None)
            return self._scattered[id(a)]

        return self.client.submit(fn, *[put(a) for a in args], **{k: put(v) for k, v in kwargs.items()}, pure=False)


def task_executor(client):
    """An executor for cohort-wide work that splits into independent tasks (e.g. one gate fit per marker): ``None``
    without a client (the work runs in this process), else an object whose ``submit(fn, *args, **kwargs)`` returns
    a Dask future (``.result()`` gives the value or raises the task's exception).

    Examples
    --------
    >>> task_executor(None) is None
    True
    """
    return None if client is None else _DaskExecutor(client)


LOST_WORKER_ERRORS = ("FutureCancelledError", "CancelledError", "KilledWorker", "CommClosedError")
"""Exception types of a task whose Dask worker process died (most often: killed by its nanny for memory)."""


def lost_worker_hint(limit_bytes: float | None) -> str:
    """What to tell the user when a sample's worker died.

    Examples
    --------
    >>> lost_worker_hint(4e9).split(";")[0]
    ' (its Dask worker died, most often by going over its memory limit of 4.0 GB'
    """
    size = f" of {limit_bytes / 1e9:.1f} GB" if limit_bytes else ""
    return (f" (its Dask worker died, most often by going over its memory limit{size}; give each worker more with "
            "--memory-limit / run.memory_limit, or use fewer workers)")


def _worker_memory_limit(client) -> float | None:
    try:
        limits = [w.get("memory_limit") for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return None
    limits = [x for x in limits if x]
    return float(min(limits)) if limits else None


@contextmanager
def dask_client(*, address: str | None, n_workers: int, threads_per_worker: int, memory_limit: str | None,
                console) -> Iterator[Any]:
    """A Dask client: an existing scheduler at ``address``, or a local cluster of ``n_workers`` processes.

    Raises
    ------
    RunError
        The scheduler at ``address`` cannot be reached.
    """
    from distributed import Client, LocalCluster

    if address:
        from .errors import RunError

        try:
            client = Client(address, timeout="20s")
        except OSError as exc:
            raise RunError(f"cannot reach the Dask scheduler at {address} ({exc}); start it or drop --scheduler") from None
        console.print(f"connected to Dask scheduler {address} (dashboard: {client.dashboard_link})")
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                           processes=True, dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    console.print(f"local Dask cluster: {n_workers} worker(s); dashboard: {client.dashboard_link}")
    log.info("local Dask cluster with %d workers, dashboard %s", n_workers, client.dashboard_link)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def progress_bars(console, *, enabled: bool):
    """The run's rich progress display (one bar per stage, added by the runner); a no-op when not ``enabled``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(*cols, console=console, disable=not enabled, transient=False)


@contextmanager
def tile_progress(bar, sample_id: str) -> Iterator[None]:
    """Within the block, the tile tasks of one large image advance their own bar (``progress.report_progress``)."""
    from .progress import report_progress

    tile_bar = bar.add_task(f"  {sample_id}: tiles", total=None)

    def on_tiles(stage, done, total):
        bar.update(tile_bar, description=f"  {sample_id}: {stage}", completed=done, total=total)

    with report_progress(on_tiles):
        yield


@contextmanager
def run_log(path: str | Path) -> Iterator[logging.Handler]:
    """Within the block, the ``chemozone`` logger (INFO and up) also writes to ``path`` (``OUT/run.log``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        handler.close()
