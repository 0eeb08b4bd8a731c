"""Bulk writes that a stage hands off, so that its Python work and the database's own work run
side by side: in a child process on the other core once a stage has much to write, in this
process, in order, while it has little (:class:`StageWriter`).

A million-recipient run spends about as long in SQLite's B-trees (inserting the audience and the
ledger, settling each batch) as in Python (fetching, rendering, encoding, parsing SOLAPI's
answers); in one process the two take turns on one core. A *job* is a module-level function
``job(store, conn, *args)``, run in one transaction of its own (``store.write(rebuildable=True)``),
jobs in the order submitted. Only work that is safe to lose to a crash belongs here: a re-run
writes it again (an audience snapshot, rendered ledger rows), or the ledger protocol recovers it
(a settled batch is ``pending`` again and is reconciled with the provider). A claim, which must
be durable before a send, never is.

The caller must :meth:`StageWriter.wait` before it reads what its jobs wrote. On SQLite the
child's write transactions and this process's queue on a file lock next to the database instead
of polling in SQLite's busy handler (which sleeps up to 100 ms between tries).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .store import StateStore

__all__ = ["BackgroundWriteError", "ProcessWriter", "StageWriter"]

log = logging.getLogger(__name__)

Job = Callable[..., Any]

#: Rows of work from which a stage's writes go to a child process. Starting one (a fresh Python
#: importing SQLAlchemy) takes about 0.3 s of the other core, about the time 20,000 ledger rows
#: take to write; it is started at half this, so that it is ready when the work gets there.
PROCESS_WRITER_ROWS = 20_000


class BackgroundWriteError(RuntimeError):
    """A job failed in the writer process (its error and traceback are in the message)."""


class StageWriter:
    """Runs a stage's write jobs in order: in this process until the rows submitted reach
    ``process_after``, then in a :class:`ProcessWriter` (where another process can open the
    store and the machine has a second core). Use it as a context manager: leaving the block
    waits for every job."""

    def __init__(self, store: StateStore, *, process_after: int | None = None) -> None:
        self.store = store
        self.process_after = PROCESS_WRITER_ROWS if process_after is None else process_after
        self._rows = 0
        self._child: ProcessWriter | None = None
        self._may_fork = store.shareable_across_processes and (os.cpu_count() or 1) > 1

    def submit(self, job: Job, *args: Any, rows: int) -> None:
        """Run ``job(store, conn, *args)``; ``rows``: how much it writes (decides where)."""
        self._rows += rows
        # The child takes a job only once it has had a job's time to start up.
        to_child = self._child is not None and self._rows >= self.process_after
        if self._child is None and self._may_fork and self._rows >= self.process_after // 2:
            self._child = ProcessWriter(self.store)
        if to_child:
            self._child.submit(job, *args)  # type: ignore[union-attr]
            return
        with self.store.write(rebuildable=True) as conn:
            job(self.store, conn, *args)

    @property
    def in_child(self) -> bool:
        """Whether jobs now go to a child process."""
        return self._child is not None and self._rows >= self.process_after

    def wait(self) -> None:
        """Until every job submitted so far has run; raises the first failure."""
        if self._child is not None:
            self._child.wait()

    def close(self) -> None:
        """Wait for every job, then stop the child process if one was started."""
        if self._child is not None:
            child, self._child = self._child, None
            child.close()

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the error on its way out says more than a job that failed after it
            self.close()
        except BackgroundWriteError as error:
            log.error("%s", error)


class ProcessWriter:
    """Runs jobs in a child process with its own connection to the same store.

    The child is a fresh interpreter (``python -m campaignflow.state.writer``): it neither forks
    a process that runs threads nor re-imports the caller's main module, as multiprocessing's
    spawn would. Submitting pickles the job and its arguments into a pipe and returns; the pipe's
    buffer is the queue, so a producer faster than the database waits at the next submit instead
    of piling work up in memory. A failed job is reported at the next submit or wait, and the
    jobs after it are skipped: a stage must not go on as if its writes had landed.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        jobs_read, jobs_write = os.pipe()
        acks_read, acks_write = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(jobs_read), str(acks_write)],
            pass_fds=(jobs_read, acks_write), env=env, stdin=subprocess.DEVNULL)
        os.close(jobs_read)
        os.close(acks_write)
        self._jobs = Connection(jobs_write, readable=False)
        self._acks = Connection(acks_read, writable=False)
        self._jobs.send(store.url_with_secrets)
        store.lock_writes_across_processes(True)
        self._sent = self._done = 0
        self._error: str | None = None

    def submit(self, job: Job, *args: Any) -> None:
        self._collect(block=False)
        self._raise()
        try:
            self._jobs.send((job, args))
        except (BrokenPipeError, OSError):
            self._collect(block=True)
            self._raise()
            raise
        self._sent += 1

    def wait(self) -> None:
        """Until every job submitted so far has run; raises the first failure."""
        self._collect(block=True)
        self._raise()

    def close(self) -> None:
        """Wait for the jobs, stop the child (also after a failure)."""
        try:
            self.wait()
        finally:
            try:
                self._jobs.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._jobs.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._acks.close()
            self.store.lock_writes_across_processes(False)

    def _collect(self, *, block: bool) -> None:
        while self._done < self._sent and (block or self._acks.poll()):
            try:
                answer = self._acks.recv()
            except (EOFError, OSError):
                code = self._process.poll()
                self._error = self._error or (f"the writer process ended (exit code {code}) "
                                              f"with {self._sent - self._done} job(s) not done")
                self._done = self._sent
                return
            self._done += 1
            if answer is not None and self._error is None:
                self._error = answer

    def _raise(self) -> None:
        if self._error is not None:
            raise BackgroundWriteError(self._error)


def _serve(jobs: Connection, acks: Connection) -> None:
    """The child: run jobs until told to stop; after a failure, only acknowledge."""
    store = StateStore(jobs.recv())
    store.lock_writes_across_processes(True)
    failed = False
    try:
        while True:
            item = jobs.recv()
            if item is None:
                return
            job, args = item
            if failed:
                acks.send("skipped after an earlier failure")
                continue
            try:
                with store.write(rebuildable=True) as conn:
                    job(store, conn, *args)
            except Exception as exc:  # reported to the stage, which fails the run with it
                failed = True
                name = getattr(job, "__qualname__", repr(job))
                acks.send(f"{name} failed in the writer process: {type(exc).__name__}: {exc}\n"
                          + "".join(traceback.format_exc(limit=8)))
            else:
                acks.send(None)
    except EOFError:
        return  # the stage's process is gone
    finally:
        store.dispose()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
