"""What the client relay refuses inside a batch on its own account, and why: the proxy's rules of the road.

A batch is what a client sends up to its Sync. PostgreSQL reports a change to
how it reads SQL (``client_encoding``, ``standard_conforming_strings``) only
at the batch's end, and tells names apart by their first 63 bytes; these
verdicts cover what the guardrails, reading one statement, cannot see.
"""

from __future__ import annotations

from policies.model import StatementEffect

from .base import StatementVerdict

CURSOR_VERDICT = StatementVerdict(StatementEffect.ALLOW, "bastion", "fetch from a cursor declared in SQL")
QUERY_IN_BATCH = StatementVerdict(
    StatementEffect.DENY, "bastion", "a simple Query may not come inside an unfinished extended-protocol batch; "
    "send Sync first")
# PostgreSQL tells prepared statements and portals apart by their first NAMEDATALEN - 1 bytes: two longer
# names with those in common are one name to it, and would be two here.
MAX_NAME = 63
NAME_TOO_LONG = StatementVerdict(StatementEffect.DENY, "bastion",
                                 f"statement and portal names longer than {MAX_NAME} bytes are refused: the "
                                 f"server compares only their first {MAX_NAME} bytes")
NAME_AFTER_CODE = StatementVerdict(
    StatementEffect.DENY, "bastion",
    "it names a statement or portal in non-ASCII after a Bind or Execute in the same batch, which may have "
    "changed client_encoding and with it which name the server reads; send it after a Sync, or use ASCII names")
AFTER_CODE_RAN = StatementVerdict(
    StatementEffect.DENY, "bastion",
    "it follows a Bind or Execute in the same batch, which may have run a function that changed how the server "
    "reads SQL (client_encoding, standard_conforming_strings), and this text would read otherwise then; send it "
    "after a Sync, or write it in ASCII with backslashes only in E'...' strings")


def may_copy_in(sql: str) -> bool:
    """True unless ``sql`` surely is no COPY ... FROM STDIN: keywords are ASCII, any case, never quoted."""
    text = sql.lower()
    return "copy" in text and "stdin" in text


def name_problem(names: tuple[str, ...], *, after_code: bool) -> StatementVerdict | None:
    """Why the server might take one of these statement or portal names for another; None when it cannot.

    ``after_code``: a Bind or Execute ran earlier in the batch, so client_encoding may have changed, and
    only ASCII reads alike in every encoding.
    """
    if any(len(name.encode()) > MAX_NAME for name in names):
        return NAME_TOO_LONG
    if after_code and not all(name.isascii() for name in names):
        return NAME_AFTER_CODE
    return None
