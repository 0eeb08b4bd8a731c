"""campaignflow.resources.mysql_rows: the streaming cursor reads what PyMySQL's own reads.

Against the real MariaDB (every column type an audience query may return, NULLs, strings
past each length-coding width, an error the server raises mid-stream), and over a fake
socket for what a server rarely sends (a row of 16 MB or more, a packet out of sequence, a
connection cut mid-row).
"""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable

import pymysql
import pymysql.cursors
import pytest
import sqlalchemy as sa
from pymysql.constants import CR

from campaignflow.resources.business_db import BusinessDatabase
from campaignflow.resources.mysql_rows import MAX_PACKET_LEN, StreamingCursor, _read_rows, stream_faster

COLUMNS = """
    id INT PRIMARY KEY, big BIGINT, price DECIMAL(12, 2), ratio DOUBLE, name VARCHAR(100),
    note TEXT, long_note MEDIUMTEXT, raw BLOB, born DATE, seen DATETIME(6), at TIME, doc JSON,
    flag TINYINT
"""


def _value_rows() -> list[tuple[Any, ...]]:
    rows = []
    for i in range(1, 61):
        rows.append((
            i, 2**40 + i, Decimal(f"{i}.25"), i / 7, f"고객 {i}" if i % 5 else "",
            # 1-byte, 2-byte (> 250) and 3-byte (> 65,535) length codings
            "가" * (i * 10) if i % 3 else None, "x" * (70_000 + i) if i % 20 == 0 else f"짧은 {i}",
            bytes(range(i % 256)) + b"\xff\x00", date(2026, 1, 1) + timedelta(days=i),
            datetime(2026, 12, 3, 8, 0, 0, i), timedelta(hours=i % 30, seconds=i), f'{{"n": {i}}}', i % 2,
        ))
    rows.append((61,) + (None,) * 12)
    return rows


@pytest.fixture
def connect(mariadb_url: Callable[[], str]) -> Callable[[], pymysql.connections.Connection]:
    url = sa.engine.make_url(mariadb_url())
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE t ({COLUMNS})"))
        placeholders = ", ".join(f":v{i}" for i in range(13))
        conn.execute(sa.text(f"INSERT INTO t VALUES ({placeholders})"),
                     [{f"v{i}": v for i, v in enumerate(row)} for row in _value_rows()])
    engine.dispose()
    return lambda: pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, database=url.database,
                                   charset="utf8mb4")


def _fetch(connection: pymysql.connections.Connection, cursor_class: type, sql: str, size: int,
           warnings: list[int] | None = None) -> list[tuple[Any, ...]]:
    cursor = connection.cursor(cursor_class)
    cursor.execute(sql)
    rows: list[tuple[Any, ...]] = []
    while part := cursor.fetchmany(size):
        rows.extend(part)
    assert cursor.fetchmany(size) == ()
    if warnings is not None:
        warnings.append(cursor.warning_count)
    cursor.close()
    return rows


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_rows_are_those_pymysql_reads_and_the_connection_stays_usable(connect: Any, size: int) -> None:
    connection = connect()
    try:
        expected = _fetch(connection, pymysql.cursors.SSCursor, "SELECT * FROM t ORDER BY id", size)
        got = _fetch(connection, StreamingCursor, "SELECT * FROM t ORDER BY id", size)
        assert got == expected
        assert len(got) == 61 and got[-1] == (61,) + (None,) * 12
        assert isinstance(got[0][2], Decimal) and isinstance(got[0][8], date) and isinstance(got[0][7], bytes)
        assert isinstance(got[0][10], timedelta) and len(got[19][6]) == 70_020  # a 3-byte length
        warnings: list[int] = []  # from the packet that ends the result
        for cursor_class in (pymysql.cursors.SSCursor, StreamingCursor):
            assert _fetch(connection, cursor_class, "SELECT id / 0 FROM t", size, warnings) == [(None,)] * 61
        assert warnings[0] == warnings[1] > 0
        # The connection is in step afterwards: a plain query on it still works.
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM t")
            assert cursor.fetchone() == (61,)
    finally:
        connection.close()


def test_an_error_the_server_raises_mid_stream_is_raised_as_pymysql_raises_it(connect: Any) -> None:
    # Evaluated row by row: the subquery fails at id 30, after rows have been sent.
    sql = "SELECT id, IF(id < 30, id, (SELECT 1 UNION SELECT 2)) FROM t ORDER BY id"
    errors = []
    for cursor_class in (pymysql.cursors.SSCursor, StreamingCursor):
        connection = connect()
        try:
            with pytest.raises(pymysql.MySQLError) as raised:
                _fetch(connection, cursor_class, sql, 10)
            errors.append((type(raised.value), raised.value.args))
            with connection.cursor() as cursor:  # usable afterwards, as with PyMySQL's cursor
                cursor.execute("SELECT 1")
                assert cursor.fetchone() == (1,)
        finally:
            connection.close()
    assert errors[0] == errors[1] and errors[0][1][0] == 1242, errors


def test_a_business_database_on_pymysql_streams_with_it(mariadb_url: Callable[[], str]) -> None:
    db = BusinessDatabase(mariadb_url(), chunk_size=3)
    assert db._engine.dialect._sscursor is StreamingCursor
    chunks = list(db.stream_rows("SELECT n FROM (SELECT 1 AS n UNION ALL SELECT 2 UNION ALL SELECT 3 "
                                 "UNION ALL SELECT 4) AS four ORDER BY n"))
    assert [[tuple(r) for r in rows] for _, rows in chunks] == [[(1,), (2,), (3,)], [(4,)]]
    assert not stream_faster(sa.create_engine("sqlite://"))


# -- framing, over a fake socket ------------------------------------------------------------------

def _packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def _coded(value: bytes | None) -> bytes:
    if value is None:
        return b"\xfb"
    n = len(value)
    if n < 251:
        return bytes([n]) + value
    if n < 2**16:
        return b"\xfc" + n.to_bytes(2, "little") + value
    if n < 2**24:
        return b"\xfd" + n.to_bytes(3, "little") + value
    return b"\xfe" + n.to_bytes(8, "little") + value


EOF_PACKET = b"\xfe\x00\x00\x02\x00"


class _Result:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.unbuffered_active = True
        self.converters = [("utf-8", None), ("ascii", int)]
        self.warning_count = 0
        self.affected_rows = 0
        self.rows: Any = None

    def _check_packet_is_eof(self, packet: Any) -> bool:
        return bool(packet.is_eof_packet())


class _Reset(io.BytesIO):
    def read(self, n: int | None = -1) -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")


class _Connection:
    """What StreamingCursor reads of a PyMySQL connection."""

    def __init__(self, stream: bytes | io.BytesIO) -> None:
        self._rfile = stream if isinstance(stream, io.BytesIO) else io.BufferedReader(io.BytesIO(stream))
        self._next_seq_id = 1
        self._read_timeout = self._current_timeout = None
        self._sock = None
        self.encoding = "utf8"
        self.closed = False

    def _force_close(self) -> None:
        self.closed = True

    def _read_bytes(self, n: int) -> bytes:
        data = self._rfile.read(n)
        if len(data) < n:
            self._force_close()
            raise pymysql.err.OperationalError(CR.CR_SERVER_LOST, "Lost connection to MySQL server during query")
        return data


def _cursor() -> StreamingCursor:
    cursor = StreamingCursor.__new__(StreamingCursor)  # no connection: _read_rows is given one
    cursor.connection = None
    return cursor


def test_a_row_of_16_mb_or_more_is_joined_from_its_packets() -> None:
    text = "가".encode() * 12_000_000  # 36 MB: two full packets and the rest in a third
    payload = _coded(text) + _coded(b"7")
    parts = [payload[i:i + MAX_PACKET_LEN] for i in range(0, len(payload), MAX_PACKET_LEN)]
    assert len(parts) == 3
    stream = (b"".join(_packet(seq, part) for seq, part in enumerate(parts, 1))
              + _packet(4, _coded(b"short") + _coded(b"8")) + _packet(5, EOF_PACKET))
    connection = _Connection(stream)
    result = _Result(connection)
    rows = _read_rows(_cursor(), result, connection, 10)
    assert [(len(a), b) for a, b in rows] == [(12_000_000, 7), (5, 8)] and rows[0][0][:2] == "가가"
    assert not result.unbuffered_active and result.connection is None and connection._next_seq_id == 6


def test_rows_end_at_the_size_asked_for_and_go_on_from_there() -> None:
    stream = b"".join(_packet(i + 1, _coded(f"r{i}".encode()) + _coded(str(i).encode())) for i in range(5))
    connection = _Connection(stream + _packet(6, EOF_PACKET))
    result = _Result(connection)
    assert _read_rows(_cursor(), result, connection, 3) == [("r0", 0), ("r1", 1), ("r2", 2)]
    assert connection._next_seq_id == 4 and result.unbuffered_active
    assert _read_rows(_cursor(), result, connection, 3) == [("r3", 3), ("r4", 4)]
    assert not result.unbuffered_active


@pytest.mark.parametrize("stream, error, message", [
    (_packet(1, _coded(b"a") + _coded(b"1")) + _packet(3, _coded(b"b") + _coded(b"2")),
     pymysql.err.InternalError, "Packet sequence number wrong - got 3 expected 2"),
    (_packet(1, _coded(b"a") + _coded(b"1"))[:-2], pymysql.err.OperationalError, "Lost connection"),
    (_packet(1, _coded(b"a") + _coded(b"1"))[:2], pymysql.err.OperationalError, "Lost connection"),
    (_Reset(), pymysql.err.OperationalError, "Lost connection .*Connection reset by peer"),
], ids=["out-of-sequence", "cut-mid-row", "cut-mid-header", "reset"])
def test_a_broken_stream_closes_the_connection_with_pymysqls_error(stream: Any, error: type, message: str) -> None:
    connection = _Connection(stream)
    with pytest.raises(error, match=message):
        _read_rows(_cursor(), _Result(connection), connection, 10)
    assert connection.closed


def test_values_with_every_length_coding_and_null() -> None:
    values = [b"", b"a" * 250, b"b" * 251, b"c" * 65_536, None]
    stream = b"".join(_packet(i + 1, _coded(v) + _coded(b"1")) for i, v in enumerate(values))
    short = _packet(len(values) + 1, _coded(b"only"))  # fewer values than columns: PyMySQL stops there
    connection = _Connection(stream + short + _packet(len(values) + 2, EOF_PACKET))
    rows = _read_rows(_cursor(), _Result(connection), connection, 10)
    assert [r[0] for r in rows] == [None if v is None else v.decode() for v in values] + ["only"]
    assert [r[1:] for r in rows] == [(1,)] * len(values) + [()]
