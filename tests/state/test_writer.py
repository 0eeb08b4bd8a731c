"""The stage writer (state/writer.py): write jobs in submission order, in this process and then
in a child process; failures, a dying child, SQLite's cross-process write lock, and the
durability setting of rebuildable writes.

The job functions are module-level here on purpose: the child is a fresh interpreter that
unpickles them by reference, and finds this module because its PYTHONPATH is the parent's
sys.path (pytest put tests/state there). The first test shows that this works.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from campaignflow.state import store as store_module
from campaignflow.state import writer as writer_module
from campaignflow.state.store import StateStore
from campaignflow.state.writer import BackgroundWriteError, StageWriter

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]

# What the jobs write: which job, in which process, when (inside its transaction).
LOG = sa.Table(
    "writer_test_log", sa.MetaData(),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tag", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer),
    sa.Column("at", sa.Double),
)


# -- jobs (run by the writer: job(store, conn, *args)) ------------------------------------------


def record(store: StateStore, conn: sa.Connection, tag: str) -> None:
    conn.execute(LOG.insert().values(tag=tag, pid=os.getpid(), at=time.time()))


def record_payload(store: StateStore, conn: sa.Connection, tag: str, payload: bytes) -> None:
    conn.execute(LOG.insert().values(tag=tag, pid=os.getpid(), size=len(payload), at=time.time()))


def failing_job(store: StateStore, conn: sa.Connection, message: str) -> None:
    record(store, conn, "written by the failing job")  # rolled back with it
    raise ValueError(message)


def pause(store: StateStore, conn: sa.Connection, seconds: float) -> None:
    time.sleep(seconds)


def hold(store: StateStore, conn: sa.Connection, tag: str, marker: str, seconds: float) -> None:
    """Write, say so through a file, and keep the transaction (and the write lock) open a while."""
    record(store, conn, f"{tag}-start")
    Path(marker).write_text("inside the transaction", encoding="utf-8")
    time.sleep(seconds)
    record(store, conn, f"{tag}-end")


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """StageWriter only forks where there is a second core; these tests are about the child."""
    monkeypatch.setattr(writer_module.os, "cpu_count", lambda: 2)


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'store.db'}"
    factory: Callable[[], str] = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mariadb_url")
    return factory()


def _open(url: str) -> StateStore:
    store = StateStore(url)
    LOG.metadata.create_all(store.engine)
    return store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s = _open(_url(request.param, request, tmp_path))
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[StateStore]:
    s = _open(f"sqlite:///{tmp_path / 'state' / 'store.db'}")
    yield s
    s.dispose()


def _logged(store: StateStore) -> list[tuple[str, int]]:
    with store.engine.connect() as conn:
        return [(tag, pid) for tag, pid in conn.execute(sa.select(LOG.c.tag, LOG.c.pid).order_by(LOG.c.seq))]


def _tags(store: StateStore) -> list[str]:
    return [tag for tag, _ in _logged(store)]


def _wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared: the child did not run the job"
        time.sleep(0.01)


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() in a daemon thread: a hang fails the test instead of hanging the suite."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised below, in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# -- order, inline and in the child -------------------------------------------------------------


def test_jobs_run_in_submission_order_inline_then_in_a_child(store: StateStore) -> None:
    parent = os.getpid()
    with StageWriter(store, process_after=6) as writer:
        started, in_child = [], []
        for i in range(12):
            writer.submit(record, f"job{i:02d}", rows=1)
            started.append(writer._child is not None)
            in_child.append(writer.in_child)
        # The child starts at half the threshold and takes jobs from the threshold on.
        assert started == [False] * 2 + [True] * 10
        assert in_child == [False] * 5 + [True] * 7
        child = writer._child
        assert child is not None
        writer.wait()
        rows = _logged(store)  # visible after wait(), while the child still runs
        assert child._process.poll() is None
    assert [tag for tag, _ in rows] == [f"job{i:02d}" for i in range(12)]
    assert [pid for _, pid in rows] == [parent] * 5 + [child._process.pid] * 7
    assert child._process.pid != parent
    assert child._process.returncode == 0  # stopped when the block was left
    assert writer._child is None


def test_order_holds_while_the_pipe_is_full(sqlite_store: StateStore) -> None:
    """Jobs larger than the pipe's buffer: submit waits for the child to read, nothing is lost
    or reordered, and inline jobs before the switch stay first."""
    payload = b"x" * 300_000
    with StageWriter(sqlite_store, process_after=3) as writer:
        writer.submit(record, "inline-0", rows=1)
        writer.submit(record, "inline-1", rows=1)  # starts the child
        for i in range(8):
            writer.submit(record_payload, f"big-{i}", payload, rows=1)
            writer.submit(record, f"small-{i}", rows=1)
        assert writer.in_child
    expected = ["inline-0", "inline-1"] + [tag for i in range(8) for tag in (f"big-{i}", f"small-{i}")]
    assert _tags(sqlite_store) == expected
    with sqlite_store.engine.connect() as conn:
        sizes = conn.execute(sa.select(LOG.c.size).where(LOG.c.tag.like("big-%"))).scalars().all()
    assert sizes == [len(payload)] * 8


# -- failures -----------------------------------------------------------------------------------


def test_a_failed_job_in_the_child_fails_wait_and_the_jobs_after_it_are_skipped(store: StateStore) -> None:
    writer = StageWriter(store, process_after=2)
    writer.submit(record, "inline", rows=1)  # starts the child
    writer.submit(pause, 0.3, rows=1)  # the child's first job: the rest queue up behind it
    writer.submit(record, "before", rows=1)
    writer.submit(failing_job, "boom", rows=1)
    writer.submit(record, "after", rows=1)
    writer.submit(record, "after-too", rows=1)
    child = writer._child
    assert child is not None and writer.in_child
    with pytest.raises(BackgroundWriteError) as raised:
        writer.wait()
    message = str(raised.value)
    assert "failing_job failed in the writer process: ValueError: boom" in message
    assert "Traceback" in message and "test_writer.py" in message  # where it failed, in the child
    # The failed job's own write was rolled back; the jobs after it never ran.
    assert _tags(store) == ["inline", "before"]
    # The stage cannot go on as if its writes had landed: the failure stays reported.
    with pytest.raises(BackgroundWriteError, match="boom"):
        writer.submit(record, "later", rows=1)
    with pytest.raises(BackgroundWriteError, match="boom"):
        writer.close()
    assert child._process.returncode == 0  # stopped all the same
    assert _tags(store) == ["inline", "before"]


def test_leaving_the_block_raises_a_background_failure(sqlite_store: StateStore) -> None:
    with pytest.raises(BackgroundWriteError, match="failing_job failed in the writer process: ValueError: boom"):
        with StageWriter(sqlite_store, process_after=2) as writer:
            writer.submit(record, "inline", rows=1)
            writer.submit(failing_job, "boom", rows=1)
            writer.submit(record, "skipped", rows=1)
            child = writer._child
    assert child is not None and child._process.returncode == 0
    assert _tags(sqlite_store) == ["inline"]


def test_an_error_leaving_the_block_is_not_masked_by_a_background_failure(
        sqlite_store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=writer_module.__name__)
    with pytest.raises(KeyError, match="the stage's own error"):
        with StageWriter(sqlite_store, process_after=2) as writer:
            writer.submit(record, "inline", rows=1)
            writer.submit(failing_job, "boom", rows=1)
            child = writer._child
            raise KeyError("the stage's own error")
    # The background failure is logged, the child is stopped, the stage's error goes on.
    assert "failing_job failed in the writer process: ValueError: boom" in caplog.text
    assert child is not None and child._process.returncode == 0
    assert writer._child is None


def test_the_writer_process_dying_mid_job_is_reported_not_a_hang(sqlite_store: StateStore, tmp_path: Path) -> None:
    marker = tmp_path / "inside"
    writer = StageWriter(sqlite_store, process_after=2)
    writer.submit(record, "inline", rows=1)
    writer.submit(record, "child", rows=1)
    writer.wait()
    writer.submit(hold, "killed", str(marker), 30.0, rows=1)
    writer.submit(record, "queued-1", rows=1)
    writer.submit(record, "queued-2", rows=1)
    _wait_for(marker)
    assert writer._child is not None
    writer._child._process.kill()
    # (the exit code is None when the pipe's EOF arrives before the process is reaped)
    with pytest.raises(BackgroundWriteError, match=r"writer process ended \(exit code (-9|None)\) with 3 job\(s\) not done"):
        _within(20, writer.wait)
    with pytest.raises(BackgroundWriteError, match="writer process ended"):
        _within(20, writer.close)
    # Its transaction died with it; the locks it held (flock, SQLite's) too: this process writes.
    assert _tags(sqlite_store) == ["inline", "child"]
    with sqlite_store.write() as conn:
        record(sqlite_store, conn, "after")
    assert _tags(sqlite_store) == ["inline", "child", "after"]


def test_the_writer_process_dying_between_jobs_is_reported_at_the_next_submit(sqlite_store: StateStore) -> None:
    writer = StageWriter(sqlite_store, process_after=2)
    try:
        writer.submit(record, "inline", rows=1)
        writer.submit(record, "child", rows=1)
        writer.wait()
        assert writer._child is not None
        writer._child._process.kill()
        writer._child._process.wait()
        with pytest.raises(BackgroundWriteError, match="writer process"):
            writer.submit(record, "lost", rows=1)
            _within(20, writer.wait)
    finally:
        try:
            writer.close()
        except BackgroundWriteError:
            pass
    assert _tags(sqlite_store) == ["inline", "child"]


# -- SQLite: one writer at a time across the two processes --------------------------------------


def test_sqlite_parent_writes_queue_on_the_file_lock_behind_a_child_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This process's connections do not wait in SQLite's busy handler at all: a write that
    # met the child's transaction at BEGIN IMMEDIATE would fail with "database is locked".
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 0)
    path = tmp_path / "state" / "store.db"
    store = _open(f"sqlite:///{path}")
    bystander = StateStore(f"sqlite:///{path}")  # same file, never told about the file lock
    marker = tmp_path / "inside"
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 0
        writer = StageWriter(store, process_after=2)
        writer.submit(record, "inline", rows=1)
        writer.submit(hold, "child", str(marker), 1.0, rows=1)
        assert writer.in_child
        _wait_for(marker)
        # The child holds the file lock next to the database, and SQLite's write lock.
        fd = os.open(f"{path}-writelock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        with pytest.raises(sa.exc.OperationalError, match="database is locked"), bystander.write() as conn:
            record(bystander, conn, "bystander")
        started = time.monotonic()
        with store.write() as conn:  # waits for the flock, then gets the write lock at once
            waited = time.monotonic() - started
            record(store, conn, "parent")
        writer.close()
        assert waited > 0.3
        assert _tags(store) == ["inline", "child-start", "child-end", "parent"]
    finally:
        bystander.dispose()
        store.dispose()


def test_sqlite_child_jobs_wait_for_the_parents_transaction(sqlite_store: StateStore) -> None:
    with StageWriter(sqlite_store, process_after=2) as writer:
        writer.submit(record, "inline", rows=1)
        writer.submit(record, "child-warm", rows=1)
        writer.wait()
        with sqlite_store.write() as conn:
            writer.submit(record, "child-waits", rows=1)  # to the child, which must not write now
            time.sleep(0.4)
            record(sqlite_store, conn, "parent")
            last_moment = time.time()
        writer.wait()
    with sqlite_store.engine.connect() as conn:
        at = dict(conn.execute(sa.select(LOG.c.tag, LOG.c.at)).all())
    assert _tags(sqlite_store) == ["inline", "child-warm", "parent", "child-waits"]
    assert at["child-waits"] >= last_moment


@pytest.mark.parametrize("url", [
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///file:writer_test_memory?mode=memory&cache=shared&uri=true",
], ids=["default", "memory", "shared-cache-uri"])
def test_in_memory_sqlite_never_starts_a_child(url: str) -> None:
    store = _open(url)
    try:
        assert not store.shareable_across_processes
        with StageWriter(store, process_after=0) as writer:
            for i in range(5):
                writer.submit(record, f"job{i}", rows=10_000)
            assert writer._child is None and not writer.in_child
        assert _logged(store) == [(f"job{i}", os.getpid()) for i in range(5)]
    finally:
        store.dispose()


def test_a_store_other_processes_cannot_open_never_starts_a_child(
        sqlite_store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """StageWriter's side of the in-memory case (which StateStore cannot open today, see above)."""
    assert sqlite_store.shareable_across_processes  # a file
    monkeypatch.setattr(StateStore, "shareable_across_processes", property(lambda self: False))
    with StageWriter(sqlite_store, process_after=0) as writer:
        for i in range(5):
            writer.submit(record, f"job{i}", rows=10_000)
        assert writer._child is None and not writer.in_child
    assert _logged(sqlite_store) == [(f"job{i}", os.getpid()) for i in range(5)]


def test_one_core_never_starts_a_child(sqlite_store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module.os, "cpu_count", lambda: 1)
    with StageWriter(sqlite_store, process_after=0) as writer:
        writer.submit(record, "only", rows=10_000)
        writer.submit(record, "inline", rows=10_000)
        assert writer._child is None
    assert _logged(sqlite_store) == [("only", os.getpid()), ("inline", os.getpid())]


def test_a_stage_that_will_stay_below_the_threshold_starts_no_child(
        sqlite_store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused audience-and-messages pass learns at its last chunk how much is left to write:
    when that can never reach the threshold, the child it would start at half is not started."""
    monkeypatch.setattr(writer_module.os, "cpu_count", lambda: 2)
    with StageWriter(sqlite_store, process_after=10) as writer:
        writer.submit(record, "first", rows=4)
        writer.expect_at_most(5)  # 4 + 5 < 10: no job would ever reach a child
        writer.submit(record, "second", rows=5)
        assert writer._child is None
    assert _logged(sqlite_store) == [("first", os.getpid()), ("second", os.getpid())]
    with StageWriter(sqlite_store, process_after=10) as writer:
        writer.submit(record, "third", rows=4)
        writer.expect_at_most(6)  # it may reach 10: the child starts as before
        writer.submit(record, "fourth", rows=6)
        assert writer._child is not None and writer.in_child


# -- durability of rebuildable writes ---------------------------------------------------------

NORMAL, FULL = 1, 2  # PRAGMA synchronous


def test_a_rebuildable_write_skips_the_fsync_for_that_transaction_only(sqlite_store: StateStore) -> None:
    with sqlite_store.write(rebuildable=True) as conn:
        raw = conn.connection.dbapi_connection
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == NORMAL
        record(sqlite_store, conn, "rebuildable")
    with sqlite_store.write() as conn:
        assert conn.connection.dbapi_connection is raw  # the same pooled connection
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == FULL
    # Also when the rebuildable transaction fails (and is rolled back).
    with pytest.raises(RuntimeError, match="inside"):
        with sqlite_store.write(rebuildable=True) as conn:
            record(sqlite_store, conn, "rolled back")
            raise RuntimeError("inside the transaction")
    with sqlite_store.write() as conn:
        assert conn.connection.dbapi_connection is raw
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == FULL
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == FULL
    assert _tags(sqlite_store) == ["rebuildable"]
