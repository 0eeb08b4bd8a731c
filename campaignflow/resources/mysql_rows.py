"""Streaming a MySQL result set through PyMySQL about twice as fast as PyMySQL reads it.

An audience query streams (server-side cursor, SQLAlchemy's ``yield_per``) and PyMySQL reads
each row through half a dozen method calls per column and a packet object per row: at a million
rows of four columns that was 10.6 µs a row, half of the audience stage. :class:`StreamingCursor`
reads the same packets from the same buffered socket in one loop (4.9 µs a row, measured with
``benchmarks/send_throughput.py``'s query) and leaves everything but rows (the end of the
result, an error from the server, a row of 16 MB or more) to PyMySQL's own code.

It relies on PyMySQL 1.x's connection internals (``_rfile``, ``_next_seq_id``, the result's
``converters``), which is why pyproject pins ``pymysql<2`` and :func:`stream_faster` checks them:
with anything else, PyMySQL's own cursor stays in place.
"""

from __future__ import annotations

from typing import Any

import pymysql
import pymysql.cursors
from pymysql import err
from pymysql.constants import CR
from pymysql.protocol import MysqlPacket

__all__ = ["StreamingCursor", "stream_faster"]

MAX_PACKET_LEN = 0xFFFFFF  # a payload this long continues in the next packet
_NULL, _TWO_BYTES, _THREE_BYTES, _EIGHT_BYTES = 0xFB, 0xFC, 0xFD, 0xFE
_EOF, _ERROR = 0xFE, 0xFF  # first bytes of the packets that are not rows

_CONNECTION_PARTS = ("_rfile", "_next_seq_id", "_read_timeout", "_current_timeout", "_sock", "encoding")


class StreamingCursor(pymysql.cursors.SSCursor):
    """PyMySQL's unbuffered cursor with a faster :meth:`fetchmany` (what SQLAlchemy's
    ``partitions`` calls); every other method is PyMySQL's and sees the same connection state."""

    def fetchmany(self, size: int | None = None) -> Any:
        self._check_executed()
        result = self._result
        conn = getattr(result, "connection", None)
        if result is None or not result.unbuffered_active or conn is None:
            return ()
        if any(not hasattr(conn, part) for part in _CONNECTION_PARTS):
            return super().fetchmany(size)
        rows = _read_rows(self, result, conn, self.arraysize if size is None else size)
        self.rownumber += len(rows)
        return rows or ()  # () at the end, as PyMySQL answers


def _read_rows(cursor: StreamingCursor, result: Any, conn: Any, size: int) -> list[tuple[Any, ...]]:
    if conn._current_timeout != conn._read_timeout:  # as PyMySQL's _read_packet does
        conn._sock.settimeout(conn._read_timeout)
        conn._current_timeout = conn._read_timeout
    read = conn._rfile.read
    converters = result.converters
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    seq = conn._next_seq_id
    try:
        for _ in range(size):
            header = read(4)
            if len(header) < 4:
                _lost(conn)
            if header[3] != seq:
                _out_of_sequence(conn, header[3], seq)
            length = header[0] | header[1] << 8 | header[2] << 16
            data = read(length)
            if len(data) < length:
                _lost(conn)
            seq = (seq + 1) & 0xFF
            if length == MAX_PACKET_LEN:
                conn._next_seq_id = seq
                data = _continued(conn, data)
                seq = conn._next_seq_id
            if data and (data[0] == _ERROR or (data[0] == _EOF and length < 9)):
                conn._next_seq_id = seq
                if _ended(cursor, result, MysqlPacket(data, conn.encoding)):
                    break
            append(_row(data, converters))
    except OSError as error:  # what PyMySQL's _read_bytes turns a socket error into
        conn._force_close()
        raise err.OperationalError(CR.CR_SERVER_LOST, f"Lost connection to MySQL server during query ({error})") from None
    finally:
        conn._next_seq_id = seq  # also when a converter raised: the next read starts in step
    return rows


def _row(data: bytes, converters: list[tuple[str | None, Any]]) -> tuple[Any, ...]:
    """One text-protocol row: a length-coded string per column (PyMySQL's _read_row_from_packet)."""
    row: list[Any] = []
    pos, end = 0, len(data)
    for encoding, converter in converters:
        if pos >= end:
            break  # fewer values than columns: PyMySQL stops there too
        n = data[pos]
        if n < _NULL:
            pos += 1
        elif n == _NULL:
            pos += 1
            row.append(None)
            continue
        elif n == _TWO_BYTES:
            n = data[pos + 1] | data[pos + 2] << 8
            pos += 3
        elif n == _THREE_BYTES:
            n = data[pos + 1] | data[pos + 2] << 8 | data[pos + 3] << 16
            pos += 4
        else:
            n = int.from_bytes(data[pos + 1:pos + 9], "little")
            pos += 9
        value: Any = data[pos:pos + n]
        pos += n
        if encoding is not None:
            value = value.decode(encoding)
        if converter is not None:
            value = converter(value)
        row.append(value)
    return tuple(row)


def _continued(conn: Any, data: bytes) -> bytes:
    """A payload of 16 MB or more: the rest comes in the packets that follow."""
    parts = [data]
    while True:
        parts.append(_next_part(conn))
        if len(parts[-1]) < MAX_PACKET_LEN:
            return b"".join(parts)


def _next_part(conn: Any) -> bytes:
    header = conn._read_bytes(4)
    if header[3] != conn._next_seq_id:
        _out_of_sequence(conn, header[3], conn._next_seq_id)
    conn._next_seq_id = (conn._next_seq_id + 1) & 0xFF
    length = header[0] | header[1] << 8 | header[2] << 16
    return bytes(conn._read_bytes(length))


def _ended(cursor: StreamingCursor, result: Any, packet: MysqlPacket) -> bool:
    """The end of the result (True), or the server's error raised, as PyMySQL handles both."""
    if packet.is_error_packet():
        result.unbuffered_active = False
        packet.raise_for_error()
    if not result._check_packet_is_eof(packet):
        return False
    result.unbuffered_active = False
    result.connection = None
    result.rows = None
    cursor.warning_count = result.warning_count
    return True


def _lost(conn: Any) -> None:
    conn._force_close()
    raise err.OperationalError(CR.CR_SERVER_LOST, "Lost connection to MySQL server during query")


def _out_of_sequence(conn: Any, number: int, expected: int) -> None:
    conn._force_close()
    if number == 0:  # MariaDB sends an error packet numbered 0 when it shuts down
        raise err.OperationalError(CR.CR_SERVER_LOST, "Lost connection to MySQL server during query")
    raise err.InternalError(f"Packet sequence number wrong - got {number} expected {expected}")


def stream_faster(engine: Any) -> bool:
    """Give `engine`'s server-side cursors :class:`StreamingCursor` when its driver is PyMySQL
    1.x; True if it did."""
    dialect = engine.dialect
    if getattr(dialect, "driver", None) != "pymysql" or pymysql.VERSION[0] != 1:
        return False
    # A memoized property that sets dialect._sscursor the first time it is read: read it first.
    if not dialect.supports_server_side_cursors:
        return False
    dialect._sscursor = StreamingCursor
    return True
