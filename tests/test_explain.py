"""`bastion policy explain`: the connect decision first, then the granting policy's guardrails; exit codes."""

from __future__ import annotations

import argparse
import io
import json
import re
import textwrap
from pathlib import Path

import pytest

from bastion.config import Config, load_config
from bastion.errors import BastionError
from bastion.explain import EXIT_CODES, add_arguments, explain, format_text, run_explain
from policies.model import StatementEffect

CONFIG = """\
listen: {ssh: "127.0.0.1:2222", http: "127.0.0.1:8080"}
state_dir: state
identity:
  oidc: {issuer: "https://idp.example.com", client_id: bastion}
targets:
  pg-demo: {kind: postgres, address: "127.0.0.1:5432", labels: {env: demo}}
  pg-prod: {kind: postgres, address: "db1:5432", labels: {env: prod}}
  web-1: {kind: ssh, address: "web1:22", labels: {env: demo}}
policies:
  - name: dev-demo
    subjects: {groups: [dev]}
    targets: {labels: {env: demo}}
    access: allow
    approval: {approvers: {groups: [sre]}}
    guardrails:
      - {effect: deny, statements: [drop, truncate, alter_system]}
      - {effect: deny, statements: [update, delete], without_where: true}
      - {effect: review, statements: [insert, update, delete], tables: [customers]}
  - name: dev-prod
    subjects: {groups: [dev]}
    targets: {labels: {env: prod}}
    access: approval
    approval: {approvers: {groups: [sre]}}
    guardrails:
      - {effect: deny, statements: [drop]}
      - {effect: review, statements: [insert, update, delete]}
  - name: contractors-out
    subjects: {users: [mallory]}
    targets: {names: ["*"]}
    access: deny
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


@pytest.fixture
def config(config_file: Path) -> Config:
    return load_config(config_file)


@pytest.mark.parametrize(
    ("user", "groups", "target", "sql", "effect", "rule", "code"),
    [
        ("alice", ["dev"], "pg-demo", "SELECT * FROM orders", "allow", "default", 0),
        ("alice", ["dev"], "pg-demo", "DROP TABLE orders", "deny", "dev-demo.guardrails[0]", 3),
        ("alice", ["dev"], "pg-demo", "DELETE FROM orders", "deny", "dev-demo.guardrails[1]", 3),
        ("alice", ["dev"], "pg-demo", "UPDATE customers SET a = 1 WHERE id = 2", "review",
         "dev-demo.guardrails[2]", 4),
        ("alice", ["dev"], "pg-demo", "WITH d AS (DELETE FROM orders RETURNING 1) SELECT 1", "deny",
         "dev-demo.guardrails[1]", 3),
        ("alice", ["dev"], "pg-demo", "DO $$ BEGIN NULL; END $$", "deny", "opaque", 3),
        ("alice", ["dev"], "pg-demo", "SELEKT 1", "deny", "unparsable", 3),
        ("bob", [], "pg-demo", "SELECT 1", "deny", "default-deny", 3),
        ("mallory", ["dev"], "pg-demo", "SELECT 1", "deny", "contractors-out", 3),
        ("alice", ["dev"], "pg-prod", "SELECT 1", "review", "dev-prod", 4),
        ("alice", ["dev"], "pg-prod", "DROP TABLE orders", "deny", "dev-prod.guardrails[0]", 3),
        ("alice", ["dev"], "pg-prod", "INSERT INTO orders VALUES (1)", "review", "dev-prod.guardrails[1]", 4),
    ],
)
def test_explain(config: Config, user: str, groups: list[str], target: str, sql: str, effect: str, rule: str,
                 code: int) -> None:
    result = explain(config, user, groups, target, sql, now=0.0)
    assert (result.effect.value, result.rule, result.exit_code) == (effect, rule, code), result.reason


def test_a_user_who_may_not_connect_gets_the_connect_reason(config: Config) -> None:
    result = explain(config, "bob", [], "pg-demo", "SELECT 1", now=0.0)
    assert result.reason == "no policy gives bob access to pg-demo: no statement can run"
    assert result.statement is None and result.connect.rule == "default-deny"


def test_approval_is_named_before_the_guardrail_reason(config: Config) -> None:
    result = explain(config, "alice", ["dev"], "pg-prod", "SELECT 1", now=0.0)
    assert result.reason.startswith("policy dev-prod requires an approved request to connect pg-prod: ask for access")
    result = explain(config, "alice", ["dev"], "pg-prod", "UPDATE t SET a = 1 WHERE id = 1", now=0.0)
    assert result.reason.endswith("connecting also needs an approved request (policy dev-prod)")


def test_text_output(config: Config) -> None:
    result = explain(config, "alice", ["dev"], "pg-demo", "DROP TABLE orders", now=0.0)
    assert format_text(result) == ("deny    dev-demo.guardrails[0]  DROP is not allowed (rule dev-demo.guardrails[0]); "
                                   "ask an administrator if you need it")
    assert format_text(result, show_sql=True).endswith("\n        DROP TABLE orders")


@pytest.mark.parametrize(("target", "message"), [
    ("nope", "unknown target 'nope' (configured: pg-demo, pg-prod, web-1)"),
    ("web-1", "web-1 is a target of kind ssh"),
])
def test_targets_without_sql_are_refused(config: Config, target: str, message: str) -> None:
    with pytest.raises(BastionError, match=re.escape(message)):
        explain(config, "alice", ["dev"], target, "SELECT 1", now=0.0)


def _args(config_file: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bastion policy explain")
    parser.add_argument("-c", "--config")
    add_arguments(parser)
    return parser.parse_args(["-c", str(config_file), *argv])


def test_run_with_sql_argument(config_file: Path) -> None:
    out = io.StringIO()
    code = run_explain(_args(config_file, "--user", "alice", "--groups", "dev,qa", "--target", "pg-demo",
                             "--sql", "TRUNCATE orders"), io.StringIO(), out)
    assert code == 3
    assert out.getvalue().startswith("deny    dev-demo.guardrails[0]  TRUNCATE is not allowed")


def test_run_reads_stdin_as_one_message(config_file: Path) -> None:
    out = io.StringIO()
    stdin = io.StringIO("SELECT 1;\nDELETE FROM orders;\n")
    code = run_explain(_args(config_file, "--user", "alice", "--groups", "dev", "--target", "pg-demo"), stdin, out)
    assert code == 3
    assert out.getvalue().count("\n") == 1 and "statement 2 of 2" in out.getvalue()


def test_run_each_line_takes_the_strictest_exit_code(config_file: Path) -> None:
    stdin = io.StringIO("SELECT 1\n\nINSERT INTO customers VALUES (1)\nSELECT 2\n")
    out = io.StringIO()
    code = run_explain(_args(config_file, "--user", "alice", "--groups", "dev", "--target", "pg-demo", "--each"),
                       stdin, out)
    assert code == 4
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines[::2]] == ["allow", "review", "allow"]
    assert lines[3] == "        INSERT INTO customers VALUES (1)"

    stdin = io.StringIO("INSERT INTO customers VALUES (1)\nDROP TABLE t\n")
    args = _args(config_file, "--user", "alice", "--groups", "dev", "--target", "pg-demo", "--each")
    assert run_explain(args, stdin, io.StringIO()) == 3


def test_run_json(config_file: Path) -> None:
    out = io.StringIO()
    args = _args(config_file, "--user", "alice", "--groups", "dev", "--target", "pg-demo", "--json", "--each")
    code = run_explain(args, io.StringIO("SELECT email FROM customers\nDROP TABLE orders\n"), out)
    assert code == 3
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["effect"] == "allow" and first["exit_code"] == 0
    assert first["statement"]["tables"] == ["customers"] and first["statement"]["read_only"] is True
    assert first["connect"] == {"effect": "allow", "rule": "dev-demo",
                                "reason": "policy dev-demo allows alice to connect pg-demo"}
    assert (second["effect"], second["rule"], second["exit_code"]) == ("deny", "dev-demo.guardrails[0]", 3)


def test_run_without_sql_is_an_error(config_file: Path) -> None:
    args = _args(config_file, "--user", "alice", "--target", "pg-demo")
    with pytest.raises(BastionError, match="no SQL given"):
        run_explain(args, io.StringIO("  \n"), io.StringIO())


def test_effects_map_to_documented_exit_codes() -> None:
    assert EXIT_CODES == {StatementEffect.ALLOW: 0, StatementEffect.DENY: 3, StatementEffect.REVIEW: 4}
