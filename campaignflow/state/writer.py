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

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from .store import SQLITE_BULK_CACHE_KIB, StateStore

__all__ = ["BackgroundWriteError", "Pending", "ProcessWriter", "StageWriter"]

log = logging.getLogger(__name__)

Job = Callable[..., Any]

#: Rows of work from which a stage's writes go to a child process. Starting one (a fresh Python
#: importing SQLAlchemy) takes about 0.3 s of the other core, about the time 20,000 ledger rows
#: take to write; it is started at half this, so that it is ready when the work gets there.
PROCESS_WRITER_ROWS = 20_000
#: Pickled jobs that may wait for the child beyond the one it works on (back-pressure: a stage
#: far ahead of the database waits at its next submit). A ledger job of 20,000 rows is ~3 MB.
#: With one, a stage that hands over two kinds of job (the audience's snapshot and the rendered
#: ledger, in one pass) and its writer took turns: each ~75 % busy at a million recipients; with
#: four, both ~95 %, and that pass 20 s -> 17.6 s.
JOBS_QUEUED = 4


class BackgroundWriteError(RuntimeError):
    """A job failed in the writer process (its error and traceback are in the message)."""


class Pending:
    """The result of a job handed to :meth:`StageWriter.call`."""

    def __init__(self, writer: ProcessWriter | None) -> None:
        self._writer = writer
        self._done = False
        self._ok = True
        self._value: Any = None

    def _settle(self, ok: bool, value: Any) -> None:
        self._done, self._ok, self._value = True, ok, value

    def result(self) -> Any:
        """The job's return value, once it has run; BackgroundWriteError if it failed."""
        if not self._done and self._writer is not None:
            self._writer.collect_until(self)
        if not self._ok:
            raise BackgroundWriteError(self._value)
        return self._value


class StageWriter:
    """Runs a stage's write jobs in order: in this process until the rows submitted reach
    ``process_after``, then in a :class:`ProcessWriter` (where another process can open the
    store and the machine has a second core). Use it as a context manager: leaving the block
    waits for every job."""

    def __init__(self, store: StateStore, *, expected_rows: int | None = None, process_after: int | None = None) -> None:
        """``expected_rows``: how much the stage will write, when it knows (fewer than
        ``process_after``: never a child, whose start and stop would cost more than it saves)."""
        self.store = store
        self.process_after = PROCESS_WRITER_ROWS if process_after is None else process_after
        self._rows = 0
        self._child: ProcessWriter | None = None
        self._may_fork = (store.shareable_across_processes and (os.cpu_count() or 1) > 1
                          and (expected_rows is None or expected_rows >= self.process_after))

    def submit(self, job: Job, *args: Any, rows: int) -> None:
        """Run ``job(store, conn, *args)``; ``rows``: how much it writes (decides where)."""
        child = self._route(rows)
        if child is not None:
            child.submit(job, args)
            return
        with self.store.write(rebuildable=True) as conn:
            job(self.store, conn, *args)

    def call(self, job: Job, *args: Any, rows: int, durable: bool = False) -> Pending:
        """Like :meth:`submit`, for a job whose return value the stage needs: ask for it with
        :meth:`Pending.result` (meanwhile the stage goes on, the child works). ``durable``: the
        transaction's commit is fsynced (a claim before a send), not rebuildable."""
        child = self._route(rows)
        if child is not None:
            return child.call(job, args, durable)
        pending = Pending(None)
        with self.store.write(rebuildable=not durable) as conn:
            pending._settle(True, job(self.store, conn, *args))
        return pending

    def expect_at_most(self, rows: int) -> None:
        """The stage will submit at most `rows` more rows: when they would never reach
        ``process_after``, no child is started for them (0.3 s of the other core, for nothing)."""
        if self._child is None and self._rows + rows < self.process_after:
            self._may_fork = False

    def _route(self, rows: int) -> ProcessWriter | None:
        """The child process a job of `rows` goes to, or None to run it here and now."""
        self._rows += rows
        # The child takes a job only once it has had a job's time to start up. Once it takes
        # jobs it takes them all: they run in the order submitted.
        to_child = self._child is not None and self._rows >= self.process_after
        if self._child is None and self._may_fork and self._rows >= self.process_after // 2:
            self._child = ProcessWriter(self.store)
        return self._child if to_child else None

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

    The child is a fresh interpreter (running :func:`serve_from_argv`): it neither forks
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
        # The child imports from exactly this process's path: `python -m` would put the working
        # directory first, and a checkout there could hand it another campaignflow.
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(sys.path), str(jobs_read), str(acks_write)],
            pass_fds=(jobs_read, acks_write), stdin=subprocess.DEVNULL)
        os.close(jobs_read)
        os.close(acks_write)
        self._jobs = Connection(jobs_write, readable=False)
        self._acks = Connection(acks_read, writable=False)
        self._jobs.send(store.url_with_secrets)
        # Jobs leave through a thread, a few pickled jobs queued: sending a job of megabytes
        # through a pipe takes as long as the child needs to finish the job before it, and the
        # stage would wait that long at every submit (the child then waiting for the next).
        self._outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=JOBS_QUEUED)
        self._send_error: BaseException | None = None
        self._sender = threading.Thread(target=self._send_jobs, name="writer-jobs", daemon=True)
        self._sender.start()
        store.lock_writes_across_processes(True)
        self._waiting: deque[Pending | None] = deque()  # per job sent, in order: who wants its answer
        self._sent = 0
        self._error: str | None = None

    def submit(self, job: Job, args: tuple[Any, ...]) -> None:
        self._send(job, args, False, None)

    def call(self, job: Job, args: tuple[Any, ...], durable: bool) -> Pending:
        pending = Pending(self)
        self._send(job, args, durable, pending)
        return pending

    def _send(self, job: Job, args: tuple[Any, ...], durable: bool, pending: Pending | None) -> None:
        self._collect(block=False)
        self._raise()
        if self._send_error is not None:
            self._collect(block=True)
            self._error = self._error or f"the writer process ended (exit code {self._exit_code()}) before this job"
            self._raise()
        self._outbox.put(ForkingPickler.dumps((job, args, durable)))
        self._waiting.append(pending)
        self._sent += 1

    def _send_jobs(self) -> None:
        while (data := self._outbox.get()) is not None:
            if self._send_error is not None:
                continue  # the child is gone: drop the rest (their answers report it)
            try:
                self._jobs.send_bytes(data)
            except (BrokenPipeError, OSError) as error:
                self._send_error = error
        try:
            self._jobs.send(None)  # stop
        except (BrokenPipeError, OSError):
            pass

    def collect_until(self, pending: Pending) -> None:
        """Read answers until `pending`'s has come (or the child is gone)."""
        while not pending._done and self._waiting:
            self._collect_one()
        if not pending._done:
            pending._settle(False, self._error or "the writer process did not answer")

    def wait(self) -> None:
        """Until every job submitted so far has run; raises the first failure."""
        self._collect(block=True)
        self._raise()

    def close(self) -> None:
        """Wait for the jobs, stop the child (also after a failure)."""
        try:
            self.wait()
        finally:
            if not self._sent:  # still starting up, perhaps: nothing to wait for
                self._process.kill()
            self._outbox.put(None)
            self._sender.join()
            self._jobs.close()
            # The answers pipe ends when the child does: no polling loop (Popen.wait with a timeout sleeps).
            if not self._acks.poll(30):
                self._process.kill()
            self._process.wait()
            self._acks.close()
            self.store.lock_writes_across_processes(False)

    def _collect(self, *, block: bool) -> None:
        while self._waiting and (block or self._acks.poll()):
            self._collect_one()

    def _collect_one(self) -> None:
        pending = self._waiting.popleft()
        try:
            ok, value = self._acks.recv()
        except (EOFError, OSError, ValueError):  # ValueError: the answer cut short
            code = self._exit_code()
            self._error = self._error or (f"the writer process ended (exit code {code}) "
                                          f"with {len(self._waiting) + 1} job(s) not done")
            for waiting in (pending, *self._waiting):
                if waiting is not None:
                    waiting._settle(False, self._error)
            self._waiting.clear()
            return
        if not ok and self._error is None:
            self._error = value
        if pending is not None:
            pending._settle(ok, value)

    def _raise(self) -> None:
        if self._error is not None:
            raise BackgroundWriteError(self._error)

    def _exit_code(self) -> int | None:
        """The child's exit code once its pipe has ended (it is exiting: give it a moment)."""
        try:
            return self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None


def _serve(jobs: Connection, acks: Connection) -> None:
    """The child: run jobs until told to stop; after a failure, only acknowledge.

    Answers leave through a thread of their own: a claim's answer is megabytes, and while it
    waits for the stage to read it the stage may be sending the next job, which this loop
    must be free to read (both pipes full, each side waiting on the other, otherwise).
    """
    answers: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_answers, args=(answers, acks), name="writer-answers", daemon=True)
    sender.start()

    def answer(ok: bool, value: Any) -> None:
        answers.put(ForkingPickler.dumps((ok, value)))

    store = StateStore(jobs.recv(), sqlite_cache_kib=SQLITE_BULK_CACHE_KIB)
    store.lock_writes_across_processes(True)
    failed = False
    try:
        while True:
            item = jobs.recv()
            if item is None:
                return
            job, args, durable = item
            if failed:
                answer(False, "skipped after an earlier failure")
                continue
            try:
                with store.write(rebuildable=not durable) as conn:
                    result = job(store, conn, *args)
            except Exception as exc:  # reported to the stage, which fails the run with it
                failed = True
                name = getattr(job, "__qualname__", repr(job))
                answer(False, f"{name} failed in the writer process: {type(exc).__name__}: {exc}\n"
                       + "".join(traceback.format_exc(limit=8)))
            else:
                answer(True, result)
    except EOFError:
        return  # the stage's process is gone
    finally:
        answers.put(None)
        sender.join()
        store.dispose()


def _send_answers(answers: queue.SimpleQueue[bytes | None], acks: Connection) -> None:
    while (data := answers.get()) is not None:
        try:
            acks.send_bytes(data)
        except (BrokenPipeError, OSError):
            return


_CHILD = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
          "from campaignflow.state.writer import serve_from_argv; serve_from_argv()")


def serve_from_argv() -> None:
    """The child's entry point: the pipes' file descriptors are its arguments."""
    _serve(Connection(int(sys.argv[2]), writable=False), Connection(int(sys.argv[3]), readable=False))
