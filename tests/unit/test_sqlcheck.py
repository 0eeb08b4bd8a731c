"""Tests for campaignflow.sqlcheck: static checks of campaign SQL (MySQL dialect)."""

from __future__ import annotations

import contextlib
import pickle
import string
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignflow.sqlcheck import SelectShape, SqlProblem, analyze_select, bind_parameters

CRM_QUERY = (
    "SELECT c.id AS customer_id, c.phone, c.company_name, c.company_id "
    "FROM customers c "
    "WHERE c.last_review_date < DATE_SUB(NOW(), INTERVAL 30 DAY)"
)

MYSQL_QUERY = """\
SELECT DATE_FORMAT(o.created_at, '%Y-%m-%d %H:%i') AS order_day,
       IFNULL(`c`.`company_name`, 'n/a') AS `company`,
       COUNT(o.id) AS order_count
FROM `orders` o
LEFT JOIN `customers` AS `c` ON `c`.`id` = o.`customer_id`
WHERE o.status <> 'cancelled' AND o.created_at >= CURDATE() - INTERVAL 7 DAY
GROUP BY order_day, company
ORDER BY order_day DESC
LIMIT 10, 20"""


def problem(sql: str) -> SqlProblem:
    with pytest.raises(SqlProblem) as info:
        analyze_select(sql)
    return info.value


# ------------------------------------------------------------------ accepted queries


def test_crm_query() -> None:
    shape = analyze_select(CRM_QUERY)
    assert shape == SelectShape(
        columns=("customer_id", "phone", "company_name", "company_id"),
        parameters=(),
        tables=("customers",),
    )


def test_mysql_specific_query() -> None:
    shape = analyze_select(MYSQL_QUERY)
    assert shape.columns == ("order_day", "company", "order_count")
    assert shape.tables == ("orders", "customers")
    assert shape.parameters == ()  # '%H:%i' is inside a literal


def test_qualified_columns_and_aliases() -> None:
    shape = analyze_select(
        "SELECT c.company_name, COUNT(r.id) AS review_count "
        "FROM companies c JOIN reviews r ON r.company_id = c.id GROUP BY c.company_name"
    )
    assert shape.columns == ("company_name", "review_count")
    assert shape.tables == ("companies", "reviews")


def test_joins_and_subqueries() -> None:
    shape = analyze_select(
        "SELECT c.id, x.total FROM crm.customers c "
        "LEFT JOIN (SELECT customer_id, SUM(amount) AS total FROM orders GROUP BY customer_id) x "
        "  ON x.customer_id = c.id "
        "WHERE c.id IN (SELECT customer_id FROM reviews WHERE score < 3) "
        "AND EXISTS (SELECT 1 FROM dual)"
    )
    assert shape.columns == ("id", "total")
    assert shape.tables == ("crm.customers", "orders", "reviews")


def test_with_uses_final_select_and_skips_cte_names() -> None:
    shape = analyze_select(
        "WITH recent AS (SELECT company_id, COUNT(*) AS n FROM reviews GROUP BY company_id)\n"
        "SELECT c.id AS customer_id, recent.n AS review_count\n"
        "FROM customers c JOIN recent ON recent.company_id = c.company_id"
    )
    assert shape.columns == ("customer_id", "review_count")
    assert shape.tables == ("reviews", "customers")


def test_union_uses_first_select_names() -> None:
    shape = analyze_select(
        "SELECT phone AS target FROM customers UNION ALL SELECT mobile FROM contacts"
    )
    assert shape.columns == ("target",)
    assert shape.tables == ("customers", "contacts")
    assert analyze_select("(SELECT a FROM t) UNION (SELECT b FROM u)").columns == ("a",)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM customers",
        "SELECT c.* FROM customers c",
        "SELECT c.id, c.* FROM customers c",
        "SELECT * FROM t UNION SELECT a FROM u",
    ],
)
def test_star_means_unknown_columns(sql: str) -> None:
    assert analyze_select(sql).columns is None


def test_unnamed_expressions_are_skipped_and_case_is_kept() -> None:
    shape = analyze_select("SELECT COUNT(*), a + 1, c.Phone, `Company Name`, 1 FROM t c")
    assert shape.columns == ("Phone", "Company Name", "1")


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1;", "SELECT 1 ;  \n", "SELECT 1; -- done", "SELECT 1;/* end */"],
)
def test_trailing_semicolon_is_fine(sql: str) -> None:
    assert analyze_select(sql).columns == ("1",)


def test_leading_comments_are_fine() -> None:
    sql = "-- recipients\n# old style\n/* block */ SELECT phone FROM customers"
    assert analyze_select(sql).columns == ("phone",)


# ------------------------------------------------------------------ parameters


def test_named_parameters() -> None:
    shape = analyze_select(
        "SELECT :phone AS phone, c.id FROM customers c "
        "WHERE c.company_id IN :keys AND c.phone <> :phone AND c.created_at > :since"
    )
    assert shape.columns == ("phone", "id")
    assert shape.parameters == ("phone", "keys", "since")


def test_expanding_in_parameter() -> None:
    sql = "SELECT company_id, name FROM companies WHERE company_id IN :keys"
    assert analyze_select(sql).parameters == ("keys",)
    assert bind_parameters(sql) == ("keys",)


def test_repeated_parameter_reported_once() -> None:
    assert bind_parameters("SELECT :a, :b, :a, :b AS x") == ("a", "b")


def test_parameters_in_interval_and_limit() -> None:
    sql = "SELECT a FROM t WHERE d > NOW() - INTERVAL :days DAY LIMIT :n"
    assert analyze_select(sql).parameters == ("days", "n")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a FROM t WHERE opens_at = '09:00'",
        "SELECT a FROM t WHERE note = 'call at :time'",
        'SELECT a FROM t WHERE note = "a:b"',
        "SELECT a FROM t WHERE note = 'it''s :x'",
        "SELECT a FROM t WHERE note = 'esc\\' :x'",
        "SELECT `odd:name` FROM t",
        "SELECT a FROM t -- :x",
        "SELECT a FROM t # :x",
        "SELECT a /* :x */ FROM t",
        "SELECT a FROM t WHERE x = 1 -- :x\n",
    ],
)
def test_not_parameters(sql: str) -> None:
    assert bind_parameters(sql) == ()
    assert analyze_select(sql).parameters == ()


def test_double_colon_is_not_a_parameter_and_is_rejected() -> None:
    sql = "SELECT a FROM t WHERE b::int = 1"
    assert bind_parameters(sql) == ()
    found = problem(sql)
    assert found.code == "sql-syntax"
    assert (found.line, found.column) == (1, 24)
    assert "CAST" in (found.hint or "")


def test_colon_after_word_is_not_a_parameter() -> None:
    # SQLAlchemy does not bind "a:b" (a word character precedes the colon) ...
    assert bind_parameters("SELECT a:b FROM t") == ()
    # ... and MySQL would reject it, so the validator does too.
    assert problem("SELECT a:b FROM t").code == "sql-syntax"


def test_dash_dash_without_space_is_not_a_comment() -> None:
    # MySQL reads "--:x" as "- -:x", so :x is a real parameter there.
    assert bind_parameters("SELECT 1 --:x") == ("x",)


def test_assignment_operator_is_not_a_parameter() -> None:
    assert analyze_select("SELECT @n := 1 AS n").parameters == ()


@pytest.mark.parametrize("sql", ["SELECT :1", "SELECT a FROM t WHERE b = :naïve"])
def test_invalid_parameter_names(sql: str) -> None:
    assert problem(sql).code == "sql-syntax"
    with pytest.raises(SqlProblem):
        bind_parameters(sql)


def test_positional_placeholder_rejected() -> None:
    found = problem("SELECT a FROM t WHERE b = ?")
    assert (found.code, found.column) == ("sql-syntax", 27)


def test_parameters_keep_error_positions() -> None:
    sql = "SELECT a FROM t\nWHERE x = :phone AND\n  y = :keys AND z = = 1"
    found = problem(sql)
    assert (found.code, found.line) == ("sql-syntax", 3)
    assert found.column == 21  # the second "="


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSERT INTO t (a) VALUES (1)", "INSERT"),
        ("UPDATE customers SET phone = NULL", "UPDATE"),
        ("DELETE FROM customers", "DELETE"),
        ("REPLACE INTO t VALUES (1)", "REPLACE"),
        ("DROP TABLE customers", "DROP TABLE"),
        ("CREATE TABLE x (a INT)", "CREATE TABLE"),
        ("ALTER TABLE t ADD COLUMN b INT", "ALTER TABLE"),
        ("TRUNCATE TABLE customers", "TRUNCATE"),
        ("GRANT SELECT ON t TO u", "GRANT"),
        ("SET @a = 1", "SET"),
        ("CALL refresh_stats()", "CALL"),
        ("LOAD DATA INFILE '/tmp/x' INTO TABLE t", "LOAD DATA"),
        ("SHOW TABLES", "SHOW"),
        ("  (DELETE FROM t)", "DELETE"),
    ],
)
def test_not_read_only(sql: str, kind: str) -> None:
    found = problem(sql)
    assert found.code == "sql-not-read-only"
    assert found.message.startswith(f"{kind} is not allowed")
    assert "read-only SELECT or WITH" in found.message


def test_with_delete_is_rejected_at_the_delete() -> None:
    found = problem("WITH x AS (SELECT 1)\nDELETE FROM t")
    assert found.code == "sql-not-read-only"
    assert "DELETE" in found.message
    assert (found.line, found.column) == (2, 1)


@pytest.mark.parametrize(
    ("sql", "kind", "line"),
    [
        ("WITH x AS (SELECT 1) REPLACE INTO t VALUES (1)", "REPLACE", 1),
        ("WITH x (a, b) AS (SELECT 1, 2), y AS (SELECT 3)\nUPDATE t SET a = 1", "UPDATE", 2),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT", 1),
    ],
)
def test_with_introducing_other_statements(sql: str, kind: str, line: int) -> None:
    found = problem(sql)
    assert (found.code, found.line) == ("sql-not-read-only", line)
    assert found.message.startswith(f"{kind} is not allowed")


def test_with_recursive_and_parenthesised_body_are_fine() -> None:
    sql = (
        "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
        "SELECT i FROM n"
    )
    assert analyze_select(sql).columns == ("i",)
    assert analyze_select("WITH x AS (SELECT 1 AS a) (SELECT a FROM x)").columns == ("a",)


@pytest.mark.parametrize("sql", ["phone", "foo bar", "(1)", "@a"])
def test_bare_expression_is_a_syntax_error(sql: str) -> None:
    found = problem(sql)
    assert found.code == "sql-syntax"
    assert "expected a SELECT or WITH statement" in found.message


def test_nested_data_modification_is_rejected() -> None:
    found = problem("WITH x AS (DELETE FROM t RETURNING id) SELECT * FROM x")
    assert found.code == "sql-not-read-only"
    assert "DELETE" in found.message


@pytest.mark.parametrize(
    ("sql", "what", "column"),
    [
        ("SELECT a INTO OUTFILE '/tmp/x' FROM t", "INTO OUTFILE", 10),
        ("SELECT a FROM t INTO OUTFILE '/tmp/x'", "INTO OUTFILE", 17),
        ("SELECT a INTO DUMPFILE '/tmp/x' FROM t", "INTO DUMPFILE", 10),
        ("SELECT a INTO @v FROM t", "INTO @variable", 10),
    ],
)
def test_select_into_is_not_read_only(sql: str, what: str, column: int) -> None:
    found = problem(sql)
    assert found.code == "sql-not-read-only"
    assert what in found.message
    assert (found.line, found.column) == (1, column)


def test_into_inside_literal_or_backticks_is_fine() -> None:
    assert analyze_select("SELECT 'INTO OUTFILE', `into` FROM t").columns == (
        "INTO OUTFILE",
        "into",
    )


@pytest.mark.parametrize(
    ("sql", "clause"),
    [
        ("SELECT a FROM t FOR UPDATE", "FOR UPDATE"),
        ("SELECT a FROM t WHERE b = 1 FOR UPDATE SKIP LOCKED", "FOR UPDATE"),
        ("SELECT a FROM t FOR SHARE", "FOR SHARE"),
        ("SELECT a FROM t\nLOCK IN SHARE MODE", "LOCK IN SHARE MODE"),
        ("SELECT a FROM (SELECT a FROM t FOR UPDATE) s", "FOR UPDATE"),
    ],
)
def test_locking_reads(sql: str, clause: str) -> None:
    found = problem(sql)
    assert found.code == "sql-locking-read"
    assert found.message.startswith(clause)


def test_locking_read_position() -> None:
    found = problem("SELECT a\nFROM t\n  FOR UPDATE")
    assert (found.line, found.column) == (3, 3)


@pytest.mark.parametrize(
    ("sql", "line", "column"),
    [
        ("SELECT 1; SELECT 2", 1, 11),
        ("SELECT phone\nFROM customers;\n\n  DELETE FROM customers", 4, 3),
        ("SELECT 1;;", 1, 10),
        ("SELECT ';' AS s; SELECT 2", 1, 18),
    ],
)
def test_multiple_statements(sql: str, line: int, column: int) -> None:
    found = problem(sql)
    assert found.code == "sql-multiple-statements"
    assert (found.line, found.column) == (line, column)


def test_semicolon_in_literal_or_comment_is_not_a_separator() -> None:
    assert analyze_select("SELECT ';' AS s FROM t -- ; DROP TABLE t").columns == ("s",)


@pytest.mark.parametrize("sql", ["", "   \n\t", "-- nothing", "# nothing", "/* x */", " ; "])
def test_empty(sql: str) -> None:
    assert problem(sql).code == "sql-empty"


def test_executable_comment_rejected() -> None:
    found = problem("SELECT a FROM t /*!50000 FOR UPDATE */")
    assert found.code == "sql-syntax"
    assert found.column == 17


# ------------------------------------------------------------------ syntax errors


def test_typo_on_line_three_reports_line_three() -> None:
    sql = "SELECT c.id,\n       c.phone\nFROM customers c WHERE c.id = = 1"
    found = problem(sql)
    assert found.code == "sql-syntax"
    assert found.line == 3
    assert found.column == 31
    assert "'='" in found.message
    assert "\n" not in found.message


def test_syntax_error_double_alias() -> None:
    found = problem("SELECT c.id,\n  c.name AS AS x\nFROM customers c")
    assert (found.code, found.line) == ("sql-syntax", 2)


def test_unterminated_literal_points_at_opening_quote() -> None:
    found = problem("SELECT a FROM t\nWHERE b = 'oops")
    assert (found.code, found.line, found.column) == ("sql-syntax", 2, 11)
    with pytest.raises(SqlProblem):
        bind_parameters("SELECT a FROM t\nWHERE b = 'oops")


def test_unterminated_comment() -> None:
    assert problem("SELECT 1 /* never closed").column == 10


# ------------------------------------------------------------------ SqlProblem behaviour


def test_problem_is_cached_but_raised_fresh() -> None:
    first = problem("DELETE FROM t")
    second = problem("DELETE FROM t")
    assert first == second
    assert first is not second


def test_problem_survives_pickle_and_str() -> None:
    found = problem("DELETE FROM t")
    assert pickle.loads(pickle.dumps(found)) == found
    assert str(found).startswith("DELETE is not allowed")
    assert found.args == (found.message,)


def test_problem_passes_through_contextmanager_and_notes() -> None:
    @contextlib.contextmanager
    def wrapper() -> Iterator[None]:
        yield

    with pytest.raises(SqlProblem) as info:
        with wrapper():
            analyze_select("DROP TABLE t")
    info.value.add_note("from campaign x.yaml")
    assert info.value.__notes__ == ["from campaign x.yaml"]
    with pytest.raises(AttributeError):
        info.value.code = "other"  # type: ignore[misc]


# ------------------------------------------------------------------ properties

SQL_PIECES = st.sampled_from(
    [
        "SELECT", "WITH", "FROM", "WHERE", "INTO", "OUTFILE", "FOR", "UPDATE", "UNION",
        "DELETE", "(", ")", ",", ";", "'", '"', "`", ":", "::", ":x", "?", "--", "-- ",
        "#", "/*", "*/", "/*!", "*", "t", "t.*", "1", "\n", "AS", "a", "=", "IN",
        "INTERVAL", "DAY", "LIMIT", "JOIN", "ON", "\\", "@v", ":=",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=60),
        st.lists(SQL_PIECES | st.text(max_size=3), max_size=25).map(" ".join),
        st.lists(SQL_PIECES, max_size=25).map("".join),
    )
)
def test_arbitrary_text_gives_shape_or_problem(sql: str) -> None:
    try:
        result = analyze_select(sql)
    except SqlProblem as found:
        assert found.code in {
            "sql-syntax",
            "sql-multiple-statements",
            "sql-not-read-only",
            "sql-empty",
            "sql-locking-read",
        }
        assert found.line >= 1 and found.column >= 1
        assert found.line <= sql.count("\n") + 1
        assert "\n" not in found.message
    else:
        assert isinstance(result, SelectShape)


UNQUOTED_ALIAS = st.from_regex(r"c_[a-z0-9_]{0,12}", fullmatch=True)
QUOTED_ALIAS = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="`\\"
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s == s.rstrip())
EXPRESSIONS = st.sampled_from(
    ["t.col_a", "col_b", "42", "'text'", "COUNT(*)", ":param", "a + 1", "IFNULL(x, 0)"]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(EXPRESSIONS, st.one_of(UNQUOTED_ALIAS, QUOTED_ALIAS), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_generated_aliases_round_trip(items: list[tuple[str, str, bool]]) -> None:
    parts = []
    for expression, alias, use_as in items:
        written = alias if alias.startswith("c_") and all(
            ch in string.ascii_lowercase + string.digits + "_" for ch in alias
        ) else "`" + alias + "`"
        parts.append(f"{expression} {'AS ' if use_as else ''}{written}")
    sql = f"SELECT {', '.join(parts)} FROM t WHERE k IN :keys"
    shape = analyze_select(sql)
    assert shape.columns == tuple(alias for _, alias, _ in items)
    uses_param = any(expression == ":param" for expression, _, _ in items)
    assert shape.parameters == (("param", "keys") if uses_param else ("keys",))
