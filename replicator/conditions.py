"""Filter ``conditions``: one boolean expression on the source table, or nothing.

The text is the one thing from a config that is pasted into SQL (``WHERE (<conditions>)``), and
it runs on the source with every chunk and every delta pass. So it is checked twice, before
anything else happens:

1. **By its shape, here, without a database** (``shape_problem``): outside quoted literals and
   identifiers there must be no ``;``, no comment (``--``, ``/*``), no ``$`` (dollar quoting,
   parameters), and parentheses must balance without ever closing one the text did not open.
   Then, wherever it is pasted inside ``( )``, it cannot end the statement, start another or
   reach past its parentheses. Literals are read both as PostgreSQL reads them with
   ``standard_conforming_strings`` on (the default) and off, and the text must pass both ways,
   so the server's setting cannot make a literal end where this scan did not.
2. **By the source** (``verify``): every function it names must be IMMUTABLE or STABLE (a
   VOLATILE one may write, sleep or differ per call); then the source parses and plans
   ``SELECT 1 FROM <table> WHERE (<conditions>)`` through the extended protocol (which refuses
   a second statement) inside a read-only transaction that is rolled back, with a
   ``statement_timeout``, so nothing it could call may write or hang the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import ConfigError

# How long the source may take to parse and plan a condition (a STABLE function that sleeps).
CHECK_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Token:
    kind: str  # "ident" (unquoted, folded to lower case), "quoted" (a "quoted" identifier), "punct", "other"
    text: str


def shape_problem(text: str) -> str | None:
    """Why ``text`` is not a single parenthesizable expression, or None when it is."""
    for backslash_escapes in (False, True):
        problem = _scan(text, backslash_escapes)[1]
        if problem:
            return problem
    return None


def function_names(text: str) -> list[tuple[str | None, str]]:
    """The ``[schema.]name(`` calls in ``text`` (names as the server folds them)."""
    tokens, problem = _scan(text, False)
    if problem:
        return []
    found = []
    for i, tok in enumerate(tokens):
        if tok.kind not in ("ident", "quoted") or i + 1 >= len(tokens) or tokens[i + 1].text != "(":
            continue
        schema = None
        if i >= 2 and tokens[i - 1].text == "." and tokens[i - 2].kind in ("ident", "quoted"):
            schema = tokens[i - 2].text
        found.append((schema, tok.text))
    return list(dict.fromkeys(found))


def require_expression(text: str, where: str = "conditions") -> str:
    """``text`` if its shape is that of one expression; else a ConfigError (used wherever it is pasted)."""
    problem = shape_problem(text)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return text


def _scan(text: str, backslash_escapes: bool) -> tuple[list[Token], str | None]:
    """Tokens of ``text`` as far as quoting goes, and the first problem found.

    ``backslash_escapes``: read every '...' literal as with standard_conforming_strings = off.
    """
    tokens: list[Token] = []
    depth = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "'":
            e_prefix = bool(tokens) and tokens[-1].kind == "ident" and tokens[-1].text == "e" and _adjacent(text, i)
            escaped = backslash_escapes or e_prefix
            if e_prefix:
                tokens.pop()
            end = _literal_end(text, i + 1, "'", escaped)
            if end < 0:
                return tokens, "a quoted literal ('...') is not closed"
            tokens.append(Token("other", text[i:end]))
            i = end
        elif ch == '"':
            end = _literal_end(text, i + 1, '"', False)
            if end < 0:
                return tokens, 'a quoted identifier ("...") is not closed'
            tokens.append(Token("quoted", text[i + 1:end - 1].replace('""', '"')))
            i = end
        elif ch.isalpha() or ch == "_" or ord(ch) > 127:
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_" or ord(text[j]) > 127):
                j += 1
            tokens.append(Token("ident", text[i:j].lower()))
            i = j
        elif ch.isdigit():
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "._"):
                j += 1
            tokens.append(Token("other", text[i:j]))
            i = j
        elif ch.isspace():
            i += 1
        else:
            two = text[i:i + 2]
            if ch == ";":
                return tokens, "a ';' outside quotes: conditions must be one expression, not statements"
            if two in ("--", "/*"):
                return tokens, f"a comment ({two}) outside quotes: conditions must be one expression, without comments"
            if ch == "$":
                return tokens, "a '$' outside quotes (dollar quoting or a parameter): write literals in '...'"
            if ch == "\\" or ch == "\x00":
                return tokens, f"a {'backslash' if ch == chr(92) else 'NUL character'} outside quotes"
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    return tokens, "a ')' closes a parenthesis the condition did not open"
            tokens.append(Token("punct", ch))
            i += 1
    if depth:
        return tokens, f"{depth} parenthesis(es) opened and not closed"
    return tokens, None


def _adjacent(text: str, quote: int) -> bool:
    """Whether the E before ``text[quote]`` touches it (E'...' is an escape string, E '...' is not)."""
    return quote > 0 and text[quote - 1] in "eE"


def _literal_end(text: str, start: int, quote: str, backslash_escapes: bool) -> int:
    """Index just past the closing ``quote`` (a doubled quote is part of the literal); -1 if none."""
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if backslash_escapes and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return -1


def verify(conn: psycopg.Connection[Any], table: sql.Composable, text: str, where: str, display: str) -> None:
    """Refuse ``text`` unless the source takes it as one harmless boolean expression on ``table``.

    Runs in a read-only transaction (or savepoint) that is always rolled back, so it works on an
    autocommit connection and inside the snapshot's transaction alike.
    """
    require_expression(text, f"{where}: conditions")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL transaction_read_only = on")
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(CHECK_TIMEOUT_MS)))
            # Names resolve as in the sessions that copy the rows (the catalog reader empties search_path).
            conn.execute(
                "SELECT set_config('search_path', reset_val, true) FROM pg_settings WHERE name = 'search_path'"
            )
            _refuse_volatile(conn, text, where)
            query = sql.SQL("EXPLAIN (COSTS OFF) SELECT 1 FROM {} WHERE ({})").format(table, sql.SQL(text))
            # prepare=True: the extended protocol, which refuses more than one statement.
            conn.execute(query, prepare=True)
    except psycopg.errors.QueryCanceled:
        raise ConfigError(
            f"{where}: conditions: the source took more than {CHECK_TIMEOUT_MS / 1000:g} s just to plan the "
            f"condition on {display} (a function in it is slow even to plan): simplify it"
        ) from None
    except psycopg.Error as e:
        reason = (e.diag.message_primary or str(e)).strip()
        raise ConfigError(f"{where}: conditions: not a valid predicate on {display}: {reason}") from None


def _refuse_volatile(conn: psycopg.Connection[Any], text: str, where: str) -> None:
    for schema, name in function_names(text):
        rows = conn.execute(
            """SELECT p.oid::regprocedure::text, p.provolatile, n.nspname = 'pg_catalog'
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE p.proname = %s AND CASE WHEN %s::text IS NULL THEN n.nspname = ANY (current_schemas(true))
                                             ELSE n.nspname = %s END
               ORDER BY 1""",
            (name, schema, schema),
        ).fetchall()
        volatile = [(r[0], r[2]) for r in rows if r[1] == "v"]
        if volatile:
            func, builtin = volatile[0]
            fix = (
                "leave it out of the condition" if builtin
                else f"if it has no side effects, declare it so: ALTER FUNCTION {func} STABLE"
            )
            raise ConfigError(
                f"{where}: conditions: {func} is VOLATILE: a condition may call only IMMUTABLE or STABLE "
                f"functions (it runs on every row of every chunk and pass, so it must not change anything, wait, "
                f"or give different answers within one snapshot); {fix}"
            )
