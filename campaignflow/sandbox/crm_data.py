"""The sample business database of the CRM design (section 2.3), for demo, tests, benchmarks.

Four tables, as the production MySQL database has them::

    companies(id, name, tier)
    customers(id, phone, company_name, company_id, email, created_at, last_review_date,
              marketing_consent)
    reviews(id, company_id, customer_id, rating, content, created_at, status)
    subscriptions(id, customer_id, plan, status, start_date, end_date)

The data is deterministic for a seed (a seeded :class:`random.Random`; timestamps are
relative to "now", the local wall clock like MySQL's ``NOW()``) and shaped for the
example campaigns:

* about 40% of customers have no review in the last 30 days (``review_request``), about
  half of them never reviewed at all (``last_review_date IS NULL``);
* about 15% have a subscription that ended in the last 60 days (``winback_promo``);
* about half gave marketing consent (``marketing_consent`` is 0/1: ``TINYINT(1)`` on
  MySQL, an integer on PostgreSQL so that MySQL-style ``= 1`` works everywhere);
* phone numbers come in many formats (``010-1234-5678``, ``01012345678``,
  ``+82 10-1234-5678``, ``(010)1234-5678``, ...); on purpose about 2% are invalid
  (landlines, too short, empty, NULL) and about 1% duplicate an earlier customer's
  number written in another format -- so the pipeline has something to account for.

Dates never fall within a few hours of the campaigns' 30-day / 60-day boundaries, so
the same query gives the same recipients on every engine even when run minutes apart.

:func:`create_sample_crm` builds the demo database; :func:`bulk_customers` loads large
volumes quickly for benchmarks.  Both drop and recreate the four tables and work on
SQLite, MySQL/MariaDB and PostgreSQL.
"""

from __future__ import annotations

import bisect
import itertools
import queue
import random
import re
import threading
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["create_sample_crm", "bulk_customers", "metadata", "TABLES"]

# 0/1 flag: MySQL's BOOLEAN is TINYINT(1); PostgreSQL's BOOLEAN would reject "= 1".
_Flag = sa.Boolean(create_constraint=False).with_variant(sa.SmallInteger(), "postgresql")

_MYSQL: Final = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

metadata = sa.MetaData()

companies = sa.Table(
    "companies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("tier", sa.String(20), nullable=False),
    **_MYSQL,
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phone", sa.String(32)),
    sa.Column("company_name", sa.String(100)),
    sa.Column("company_id", sa.Integer),
    sa.Column("email", sa.String(255)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("last_review_date", sa.DateTime),
    sa.Column("marketing_consent", _Flag, nullable=False),
    sa.Index("ix_customers_company_id", "company_id"),
    sa.Index("ix_customers_last_review_date", "last_review_date"),
    **_MYSQL,
)

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("company_id", sa.Integer, nullable=False),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("rating", sa.SmallInteger, nullable=False),
    sa.Column("content", sa.String(500)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Index("ix_reviews_company_id_status", "company_id", "status"),
    sa.Index("ix_reviews_customer_id", "customer_id"),
    **_MYSQL,
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("plan", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("end_date", sa.Date),
    sa.Index("ix_subscriptions_customer_id", "customer_id"),
    sa.Index("ix_subscriptions_status_end_date", "status", "end_date"),
    **_MYSQL,
)

TABLES: Final = (companies, customers, reviews, subscriptions)

# ----------------------------------------------------------------------- vocabulary

_NAME_HEADS: Final = (
    "한빛", "푸른", "새봄", "다온", "미래", "하늘", "바른", "온누리", "가온", "누리", "해솔",
    "초록", "별빛", "든든", "참좋은", "행복한", "우리", "열린", "나래", "한결", "소담", "이음",
    "도담", "단비", "마루", "세움", "아라", "은하", "청솔", "동녘",
)
_NAME_TAILS: Final = (
    "상사", "식품", "테크", "컴퍼니", "디자인", "물산", "커머스", "랩스", "카페", "치과",
    "한의원", "베이커리", "플라워", "스튜디오", "미용실", "정비소", "학원", "약국", "부동산",
    "인테리어", "헬스", "꽃집", "세탁소", "안경원",
)
_TIERS: Final = ("free", "basic", "pro", "enterprise")
_TIER_WEIGHTS: Final = (40, 30, 22, 8)
_PLANS: Final = ("Basic", "Pro", "Premium")
_REVIEW_TEXTS: Final = (
    "친절하고 빨라요. 다음에도 이용할게요!",
    "가격 대비 만족합니다.",
    "설명이 자세해서 좋았어요.",
    "조금 늦었지만 결과는 좋아요.",
    "재방문 의사 있습니다 :)",
    "사장님이 친절하세요. 추천합니다.",
    "보통이에요.",
    "응대가 아쉬웠어요.",
    "깔끔하고 분위기가 좋아요.",
    "예약이 편했어요. 감사합니다!",
)
_EMAIL_DOMAINS: Final = ("example.com", "example.co.kr", "example.net", "example.org")
_MOBILE_OLD_PREFIXES: Final = ("011", "016", "017", "018", "019")


def _format_phone(digits: str, style: int) -> str:
    """One of the ways people write a mobile number."""
    head, mid, tail = digits[:3], digits[3:-4], digits[-4:]
    return (
        f"{head}-{mid}-{tail}",
        digits,
        f"{head} {mid} {tail}",
        f"+82 {head[1:]}-{mid}-{tail}",
        f"+82{digits[1:]}",
        f"({head}){mid}-{tail}",
        f"{head}.{mid}.{tail}",
        f"82-{head[1:]}-{mid}-{tail}",
    )[style]


# Weights of the styles above: dashes and bare digits dominate, as in real data.
_STYLE_WEIGHTS: Final = (50, 22, 8, 5, 5, 4, 3, 3)
_STYLES: Final = tuple(range(len(_STYLE_WEIGHTS)))


def _weighted(population: tuple[Any, ...], weights: tuple[int, ...]) -> Callable[[random.Random], Any]:
    """A fast ``rng.choices(population, weights)[0]`` (cumulative weights computed once)."""
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]

    def pick(rng: random.Random) -> Any:
        return population[bisect.bisect(cumulative, rng.random() * total)]

    return pick


_pick_style = _weighted(_STYLES, _STYLE_WEIGHTS)
_pick_tier = _weighted(_TIERS, _TIER_WEIGHTS)
_pick_rating = _weighted((1, 2, 3, 4, 5), (3, 5, 12, 35, 45))


def _invalid_phone(rng: random.Random) -> str | None:
    kind = rng.randrange(7)
    if kind == 0:
        return f"02-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"  # Seoul landline
    if kind == 1:
        return f"031-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"  # Gyeonggi landline
    if kind == 2:
        return f"010-{rng.randint(100, 999)}-{rng.randint(100, 999)}"  # too short
    if kind == 3:
        return ""
    if kind == 4:
        return None
    if kind == 5:
        return f"1588-{rng.randint(1000, 9999)}"  # a company's representative number
    return f"010-{rng.randint(1000, 9999)}-{rng.randint(10000, 99999)}"  # too long


class _Generator:
    """Deterministic rows; the same seed gives the same data (relative to ``now``).

    Rows are tuples in column order holding only ints, strings and ``None``: dates
    as ISO text (``YYYY-MM-DD HH:MM:SS``, ``YYYY-MM-DD``), which every driver and
    database accepts for DATETIME/DATE columns, and the consent flag as 0/1.
    """

    def __init__(self, seed: int, now: datetime, company_count: int) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.today = now.date()
        self.company_count = company_count
        self.company_names: dict[int, str] = {}
        self.recent_valid: list[tuple[str, int]] = []  # (digits, style) for duplicates
        self.review_id = 0
        self.subscription_id = 0
        # Ends in 9: coprime to 10, so id -> id * m + c (mod 10^k) is a bijection.
        self._multiplier = 61_803_399 + 20 * (seed % 1000)

    # -------------------------------------------------------------- companies

    def companies(self) -> list[tuple[Any, ...]]:
        rng = self.rng
        rows = []
        seen: dict[str, int] = {}
        for company_id in range(1, self.company_count + 1):
            name = rng.choice(_NAME_HEADS) + rng.choice(_NAME_TAILS)
            if rng.random() < 0.15:
                name = "(주)" + name
            count = seen.get(name, 0) + 1
            seen[name] = count
            if count > 1:
                name = f"{name} {count}호점"
            rows.append((company_id, name, _pick_tier(rng)))
        self.company_names = {row[0]: row[1] for row in rows}
        return rows

    # -------------------------------------------------------------- customers

    def _phone(self, customer_id: int) -> str | None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.02:
            return _invalid_phone(rng)
        if roll < 0.03 and self.recent_valid:
            digits, used_style = self.recent_valid[int(rng.random() * len(self.recent_valid))]
            style = (used_style + 1 + int(rng.random() * (len(_STYLES) - 1))) % len(_STYLES)
            return _format_phone(digits, style)
        # Unique by construction: id -> multiplier * id + c mod 10^k is a bijection.
        if rng.random() < 0.94:
            digits = "010" + f"{(customer_id * self._multiplier + 12345678) % 10**8:08d}"
        else:
            prefix = _MOBILE_OLD_PREFIXES[int(rng.random() * len(_MOBILE_OLD_PREFIXES))]
            digits = prefix + f"{(customer_id * self._multiplier + 2345678) % 10**7:07d}"
        style = _pick_style(rng)
        if len(self.recent_valid) < 2000:
            self.recent_valid.append((digits, style))
        else:
            self.recent_valid[int(rng.random() * 2000)] = (digits, style)
        return _format_phone(digits, style)

    def _at(self, days_ago: float) -> datetime:
        return self.now - timedelta(seconds=int(days_ago * 86400))

    def customer(
        self, customer_id: int, *, max_reviews: int = 4
    ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """One customer row with its reviews and subscriptions."""
        rng = self.rng
        random_ = rng.random
        company_id = 1 + int(random_() * self.company_count)
        company_name = self.company_names[company_id]
        created_days = 45 + 855 * random_()

        review_rows: list[tuple[Any, ...]] = []
        roll = random_()
        if roll < 0.21:  # never reviewed
            last_review = None
        else:
            # 0.21..0.40: last review more than 30 days ago; the rest within 30 days.
            # Never within 0.9 days of the 30-day boundary.
            latest = (31 + 369 * random_()) if roll < 0.40 else (0.1 + 29 * random_())
            created_days = max(created_days, latest + 1 + 59 * random_())
            count = 1 + int(random_() * max_reviews)
            ages = [latest] + sorted(latest + (created_days - latest) * random_() for _ in range(count - 1))
            for age in ages:
                self.review_id += 1
                status_roll = random_()
                status = "published" if status_roll < 0.85 else ("pending" if status_roll < 0.95 else "hidden")
                review_rows.append((
                    self.review_id, company_id, customer_id, _pick_rating(rng),
                    _REVIEW_TEXTS[int(random_() * len(_REVIEW_TEXTS))],
                    self._at(age).isoformat(" "), status,
                ))
            last_review = self._at(latest).isoformat(" ")

        created = self._at(created_days)
        phone = self._phone(customer_id)
        email = (
            None if random_() < 0.05
            else f"user{customer_id}@{_EMAIL_DOMAINS[int(random_() * len(_EMAIL_DOMAINS))]}"
        )
        consent = 1 if random_() < 0.5 else 0
        customer_row = (
            customer_id, phone, company_name, company_id, email, created.isoformat(" "), last_review, consent,
        )

        # Subscriptions: ~15% ended within 60 days (never 56..64 days ago, the boundary).
        sub_roll = random_()
        start = created.date() + timedelta(days=int(random_() * 21))
        plan = _PLANS[int(random_() * len(_PLANS))]
        end: date | None
        if sub_roll < 0.15:
            status, end = "ended", self.today - timedelta(days=1 + int(random_() * 55))
        elif sub_roll < 0.27:
            status, end = "ended", self.today - timedelta(days=65 + int(random_() * 636))
        elif sub_roll < 0.32:
            status, end = "cancelled", self.today - timedelta(days=1 + int(random_() * 300))
        else:
            status, end = "active", None
        if end is not None and start >= end:
            start = end - timedelta(days=30 + int(random_() * 336))
        self.subscription_id += 1
        subscription_rows = [(
            self.subscription_id, customer_id, plan, status, start.isoformat(),
            end.isoformat() if end is not None else None,
        )]
        return customer_row, review_rows, subscription_rows


# ------------------------------------------------------------------------ loading


def _company_count(customer_count: int) -> int:
    return max(5, customer_count // 8)


def _secondary_indexes() -> list[sa.Index]:
    return [index for table in TABLES for index in sorted(table.indexes, key=lambda i: str(i.name))]


_MYSQL_SPECIAL: Final = re.compile(r"[\x00\n\r\x1a'\"\\\\]")
_MYSQL_ESCAPES: Final = str.maketrans({
    "\x00": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z", "'": "\\'", '"': '\\"', "\\": "\\\\",
})
# Characters per INSERT statement (Korean text is 3 bytes a character; max_allowed_packet
# is 16 MB by default on MariaDB, 64 MB on MySQL 8).
_MYSQL_STATEMENT_CHARS: Final = 400_000


class _Inserter:
    """Fast multi-row inserts of positional tuples, per dialect.

    :meth:`render` runs on the generating thread, :meth:`write` on the writer.

    * MySQL/MariaDB: ``INSERT ... VALUES (...), (...)`` statements of a few hundred
      KB.  The values are rendered here rather than by PyMySQL's ``executemany``,
      which spends most of the load time escaping one value at a time: they are
      only ints, ``None`` and strings this module generated, escaped by the rules of
      the session (``NO_BACKSLASH_ESCAPES`` respected) when they need it at all.
    * SQLite: the driver's ``executemany`` (a C loop).
    * Others (PostgreSQL): SQLAlchemy's batched "insertmanyvalues".
    """

    def __init__(self, conn: Connection) -> None:
        self.dialect = conn.dialect
        self.mode = {"mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}.get(self.dialect.name, "core")
        self.backslash_escapes = True
        if self.mode == "mysql":
            sql_mode = conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar() or ""
            self.backslash_escapes = "NO_BACKSLASH_ESCAPES" not in str(sql_mode).upper()

    def _head(self, table: sa.Table) -> str:
        preparer = self.dialect.identifier_preparer
        columns = ", ".join(preparer.quote(c.name) for c in table.columns)
        return f"INSERT INTO {preparer.format_table(table)} ({columns}) VALUES "

    def _literal(self, value: str) -> str:
        if self.backslash_escapes:
            return "'" + value.translate(_MYSQL_ESCAPES) + "'"
        return "'" + value.replace("'", "''") + "'"

    def render(self, table: sa.Table, rows: list[tuple[Any, ...]]) -> tuple[sa.Table, Any]:
        """The rows in the form :meth:`write` sends (MySQL: the statements' text)."""
        if self.mode != "mysql":
            return table, rows
        special = _MYSQL_SPECIAL.search
        statements: list[str] = []
        parts: list[str] = []
        size = 0
        for row in rows:
            values = []
            for value in row:
                if value is None:
                    values.append("NULL")
                elif isinstance(value, str):
                    values.append(self._literal(value) if special(value) else "'" + value + "'")
                elif isinstance(value, int):
                    values.append(str(int(value)))
                else:
                    raise TypeError(f"unexpected {type(value).__name__} in generated data")
            text = "(" + ",".join(values) + ")"
            parts.append(text)
            size += len(text) + 1
            if size >= _MYSQL_STATEMENT_CHARS:
                statements.append(self._head(table) + ",".join(parts))
                parts, size = [], 0
        if parts:
            statements.append(self._head(table) + ",".join(parts))
        return table, statements

    def write(self, conn: Connection, rendered: tuple[sa.Table, Any]) -> None:
        table, payload = rendered
        if not payload:
            return
        if self.mode == "core":
            names = [c.name for c in table.columns]
            conn.execute(table.insert(), [dict(zip(names, row)) for row in payload])
            return
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.mode == "sqlite":
                marks = ", ".join("?" for _ in table.columns)
                cursor.executemany(self._head(table) + f"({marks})", payload)
            else:
                for statement in payload:
                    cursor.execute(statement)  # no parameters: nothing to interpolate
        finally:
            cursor.close()


_Batch = list[tuple[sa.Table, Any]]


class _Writer:
    """Writes batches, one transaction each -- on a background thread for servers.

    With a database server, generating the next batch in Python overlaps with the
    server storing the previous one (the socket wait releases the GIL).  SQLite
    writes inline (sqlite3's executemany is C).
    """

    def __init__(self, engine: sa.Engine, inserter: _Inserter, *, threads: int) -> None:
        self.engine = engine
        self.inserter = inserter
        self.error: BaseException | None = None
        self.queue: queue.Queue[_Batch | None] | None = None
        self.threads: list[threading.Thread] = []
        if threads:
            self.queue = queue.Queue(maxsize=2 * threads)
            for number in range(threads):
                thread = threading.Thread(target=self._run, name=f"crm-data-writer-{number}", daemon=True)
                thread.start()
                self.threads.append(thread)

    def _write(self, batch: _Batch) -> None:
        with self.engine.begin() as conn:
            for rendered in batch:
                self.inserter.write(conn, rendered)

    def _run(self) -> None:
        assert self.queue is not None
        while (batch := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self._write(batch)
                except BaseException as error:  # noqa: BLE001 - re-raised by put()/close()
                    self.error = error

    def put(self, batch: _Batch) -> None:
        if self.error is not None:
            raise self.error
        if self.queue is None:
            self._write(batch)
        else:
            self.queue.put(batch)

    def close(self, *, raise_error: bool = True) -> None:
        if self.queue is not None:
            for _ in self.threads:
                self.queue.put(None)
            for thread in self.threads:
                thread.join()
            self.queue = None
        if raise_error and self.error is not None:
            raise self.error


_WRITER_THREADS = 2  # MariaDB stores two batches at once; more does not help


def _load(url: str, count: int, *, seed: int, batch: int, max_reviews: int) -> dict[str, int]:
    if count < 0:
        raise ValueError("count must not be negative")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    engine = sa.create_engine(url)
    try:
        now = datetime.now().replace(microsecond=0)
        generator = _Generator(seed, now, _company_count(count))
        counts = {"companies": 0, "customers": 0, "reviews": 0, "subscriptions": 0}
        indexes = _secondary_indexes()
        with engine.begin() as conn:
            metadata.drop_all(conn, checkfirst=True)
            metadata.create_all(conn)
            # Indexes are built once at the end: much faster than maintaining them row by row.
            for index in indexes:
                index.drop(conn)
            inserter = _Inserter(conn)
            company_rows = generator.companies()
            for start in range(0, len(company_rows), batch):
                inserter.write(conn, inserter.render(companies, company_rows[start : start + batch]))
            counts["companies"] = len(company_rows)

        writer = _Writer(engine, inserter, threads=0 if engine.dialect.name == "sqlite" else _WRITER_THREADS)
        try:
            for first in range(1, count + 1, batch):
                customer_rows: list[tuple[Any, ...]] = []
                review_rows: list[tuple[Any, ...]] = []
                subscription_rows: list[tuple[Any, ...]] = []
                for customer_id in range(first, min(first + batch, count + 1)):
                    customer, its_reviews, its_subscriptions = generator.customer(
                        customer_id, max_reviews=max_reviews
                    )
                    customer_rows.append(customer)
                    review_rows.extend(its_reviews)
                    subscription_rows.extend(its_subscriptions)
                writer.put([
                    inserter.render(customers, customer_rows),
                    inserter.render(reviews, review_rows),
                    inserter.render(subscriptions, subscription_rows),
                ])
                counts["customers"] += len(customer_rows)
                counts["reviews"] += len(review_rows)
                counts["subscriptions"] += len(subscription_rows)
        except BaseException:
            writer.close(raise_error=False)  # the first error is the one to see
            raise
        writer.close()

        with engine.begin() as conn:
            for index in indexes:
                index.create(conn)
        return counts
    finally:
        engine.dispose()


def create_sample_crm(url: str, *, customers: int = 1000, seed: int = 7) -> dict[str, int]:
    """(Re)create the four CRM tables at ``url`` with deterministic sample data.

    Drops ``companies``, ``customers``, ``reviews`` and ``subscriptions`` if they exist
    (nothing else), creates them and fills them; returns the row count per table.
    """
    return _load(url, customers, seed=seed, batch=5000, max_reviews=4)


def bulk_customers(url: str, count: int, *, batch: int = 10_000, seed: int = 7) -> dict[str, int]:
    """Load ``count`` customers (with companies, reviews, subscriptions) fast, for benchmarks.

    Same shape of data as :func:`create_sample_crm` (tables dropped and recreated),
    fewer reviews per customer (at most 2), multi-row inserts with one transaction
    per ``batch`` customers, secondary indexes built after the load.  On MariaDB
    the next batch is generated while the server stores the previous one.
    Returns the row count per table.
    """
    return _load(url, count, seed=seed, batch=batch, max_reviews=2)
