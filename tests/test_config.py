"""bastion.yaml loading: a full file round-trips, and every bad file names file:line: key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

import bastion
from bastion.config import (
    CertificatePolicy,
    Config,
    HostPort,
    Identity,
    IssuerConfig,
    Limits,
    Listen,
    MaskingConfig,
    RecordingConfig,
    SecretRef,
    TargetConfig,
    host_port,
    load_config,
)
from bastion.config_schema import parse_duration
from bastion.errors import ConfigError
from policies.model import (
    Access,
    ApprovalRule,
    Approvers,
    Guardrail,
    MaskingRule,
    Policy,
    StatementEffect,
    Subjects,
    TargetSelector,
)

FULL = """\
listen: {ssh: "0.0.0.0:2222", http: "[::1]:8080"}
state_dir: state
public_url: "https://bastion.example.com"
host_names: [bastion.example.com, bastion]
identity:
  oidc:
    issuer: https://idp.example.com
    client_id: bastion-cli
    native_client_secret: {env: IDP_SECRET}
    scopes: [openid, profile, email, groups]
    username_claim: email
    username_domain: example.com
    groups_claim: null
    algorithms: [RS256, EdDSA]
    leeway: 1m30s
  machine_issuers:
    - issuer: http://localhost:9000/ci
      audience: bastion-ci
      username_claim: sub
      username_prefix: "ci-"
      groups_claim: roles
      groups_prefix: "ci:"
  certificates: {default_ttl: 30m, max_ttl: 1d}
limits: {auth_attempts: 3, login_timeout: 45, sessions_per_user: 2, connections_per_source: 20}
targets:
  pg-prod:
    kind: postgres
    address: "db1.internal:5432"
    labels: {env: prod, tier: 1, since: 2024-01-31}
    description: Main database
    database: app
    user: bastion_ro
    password: {env: PG_PROD_PASSWORD}
  k8s.prod:
    kind: kubernetes
    address: "[2001:db8::1]:6443"
    password: {file: secrets/k8s}
policies:
  - name: dba-prod
    subjects: {users: [alice], groups: [dba]}
    targets: {names: ["pg-*"], kinds: [postgres], labels: {env: prod}}
    access: approval
    approval:
      approvers: {groups: [dba-leads]}
      min_approvals: 2
      max_duration: 2h
      reason_required: false
      request_ttl: 15m
    guardrails:
      - {effect: deny, statements: [drop, truncate]}
      - {effect: deny, statements: [update, delete], without_where: true}
      - {effect: review, statements: [insert], tables: ["public.*", orders]}
      - {effect: allow, statements: [do]}
    masking:
      - {strategy: partial, columns: ["*.email", users.ssn, phone]}
      - {strategy: hash, detect: [credit_card, employee_id]}
  - name: sre
    subjects: {groups: [sre]}
    targets: {names: ["*"]}
    access: allow
    port_forwarding: true
masking:
  hash_key: {env: MASKING_KEY}
  detectors:
    employee_id: "EMP-[0-9]{6}"
"""

# Four lines that make a valid file; the malformed cases below add to it.
BASE = """\
listen: {ssh: "127.0.0.1:2222", http: "127.0.0.1:8080"}
state_dir: /var/lib/bastion
identity:
  oidc: {issuer: "https://idp.example.com", client_id: bastion}
"""


def write(directory: Path, text: str, name: str = "bastion.yaml") -> Path:
    """Write a config file and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_full_config_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    expected = Config(
        path=path.resolve(),
        listen=Listen(ssh=HostPort("0.0.0.0", 2222), http=HostPort("::1", 8080)),
        state_dir=tmp_path.resolve() / "state",
        identity=Identity(
            oidc=IssuerConfig(
                issuer="https://idp.example.com",
                audience="bastion-cli",
                client_id="bastion-cli",
                native_client_secret=SecretRef(env="IDP_SECRET"),
                scopes=("openid", "profile", "email", "groups"),
                username_claim="email",
                username_domain="example.com",
                groups_claim=None,
                algorithms=("RS256", "EdDSA"),
                leeway=90.0,
            ),
            machine_issuers=(
                IssuerConfig(
                    issuer="http://localhost:9000/ci",
                    audience="bastion-ci",
                    username_claim="sub",
                    username_prefix="ci-",
                    groups_claim="roles",
                    groups_prefix="ci:",
                ),
            ),
            certificates=CertificatePolicy(default_ttl=1800.0, max_ttl=86400.0),
        ),
        host_names=("bastion.example.com", "bastion"),
        public_url="https://bastion.example.com",
        limits=Limits(auth_attempts=3, login_timeout=45.0, sessions_per_user=2, connections_per_source=20),
        targets={
            "pg-prod": TargetConfig(
                name="pg-prod",
                kind="postgres",
                address=HostPort("db1.internal", 5432),
                labels={"env": "prod", "tier": "1", "since": "2024-01-31"},
                description="Main database",
                database="app",
                user="bastion_ro",
                password=SecretRef(env="PG_PROD_PASSWORD"),
            ),
            "k8s.prod": TargetConfig(
                name="k8s.prod",
                kind="kubernetes",
                address=HostPort("2001:db8::1", 6443),
                password=SecretRef(file=tmp_path.resolve() / "secrets" / "k8s"),
            ),
        },
        policies=(
            Policy(
                name="dba-prod",
                subjects=Subjects(users=("alice",), groups=("dba",)),
                targets=TargetSelector(names=("pg-*",), kinds=("postgres",), labels=(("env", "prod"),)),
                access=Access.APPROVAL,
                approval=ApprovalRule(
                    approvers=Approvers(groups=("dba-leads",)),
                    min_approvals=2,
                    max_duration=7200.0,
                    reason_required=False,
                    request_ttl=900.0,
                ),
                guardrails=(
                    Guardrail(StatementEffect.DENY, ("drop", "truncate"), name="dba-prod.guardrails[0]"),
                    Guardrail(StatementEffect.DENY, ("update", "delete"), without_where=True,
                              name="dba-prod.guardrails[1]"),
                    Guardrail(StatementEffect.REVIEW, ("insert",), ("public.*", "orders"),
                              name="dba-prod.guardrails[2]"),
                    Guardrail(StatementEffect.ALLOW, ("do",), name="dba-prod.guardrails[3]"),
                ),
                masking=(
                    MaskingRule("partial", columns=("*.email", "users.ssn", "phone"), name="dba-prod.masking[0]"),
                    MaskingRule("hash", detect=("credit_card", "employee_id"), name="dba-prod.masking[1]"),
                ),
            ),
            Policy(
                name="sre",
                subjects=Subjects(groups=("sre",)),
                targets=TargetSelector(names=("*",)),
                access=Access.ALLOW,
                port_forwarding=True,
            ),
        ),
        masking=MaskingConfig(hash_key=SecretRef(env="MASKING_KEY"), detectors={"employee_id": "EMP-[0-9]{6}"}),
    )
    assert config == expected
    assert config.http_url == "https://bastion.example.com"
    assert str(config.listen.http) == "[::1]:8080"
    assert config.targets["pg-prod"].target.labels == {"env": "prod", "tier": "1", "since": "2024-01-31"}


def test_minimal_config_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.state_dir == Path("/var/lib/bastion")
    assert config.identity.oidc.audience == "bastion"  # defaults to client_id
    assert config.identity.oidc.scopes == ("openid", "profile", "email")
    assert config.identity.oidc.algorithms == ("RS256", "ES256", "EdDSA")
    assert config.identity.oidc.leeway == 60.0
    assert config.identity.certificates == CertificatePolicy(default_ttl=3600.0, max_ttl=28800.0)
    assert config.limits == Limits()
    assert config.recording == RecordingConfig()
    assert config.host_names == ("localhost", "127.0.0.1")
    assert config.targets == {} and config.policies == ()
    assert config.masking == MaskingConfig()
    assert config.http_url == "http://127.0.0.1:8080"


# BASE plus one policy that ends at line 9; guardrail and masking cases add to it.
POLICY = BASE + ("policies:\n  - name: p\n    subjects: {groups: [dev]}\n    targets: {names: ['*']}\n"
                 "    access: allow\n")

# (id, text, line, key, a fragment of what was expected). key "" is a file-level error.
MALFORMED = [
    ("unknown top-level key", BASE + "colour: blue\n", 5, "colour",
     "unknown key; expected one of: approvals, host_names, identity"),
    ("unknown nested key", BASE + "limits:\n  auth_attempts: 3\n  max_sessions: 4\n", 7, "limits.max_sessions",
     "expected one of: auth_attempts, connections_per_source"),
    ("missing required key", 'listen: {ssh: "127.0.0.1:1", http: "127.0.0.1:2"}\nstate_dir: /s\n', 1, "identity",
     "required key is missing"),
    ("missing nested key names parent line", BASE + "targets:\n  pg:\n    kind: postgres\n", 6,
     "targets.pg.address", "required key is missing"),
    ("wrong type", BASE + "limits: {auth_attempts: six}\n", 5, "limits.auth_attempts",
     "expected an integer, got a string"),
    ("bool is not an integer", BASE + "limits:\n  sessions_per_user: true\n", 6, "limits.sessions_per_user",
     "expected an integer, got true/false"),
    ("zero is not positive", BASE + "limits: {connections_per_source: 0}\n", 5, "limits.connections_per_source",
     "expected an integer >= 1"),
    ("section of wrong type", BASE + "policies: {name: x}\n", 5, "policies", "expected a list, got a mapping"),
    ("bad duration", BASE + "  certificates:\n    max_ttl: 8 hours\n", 6, "identity.certificates.max_ttl",
     "expected a duration"),
    ("negative duration", BASE + "limits: {login_timeout: -5}\n", 5, "limits.login_timeout", "expected a duration"),
    ("bad address", BASE.replace('"127.0.0.1:2222"', "localhost"), 1, "listen.ssh",
     'expected "host:port"'),
    ("bad port", BASE + "targets:\n  pg:\n    kind: postgres\n    address: db:70000\n", 8, "targets.pg.address",
     "port number 0..65535"),
    ("unbracketed IPv6", BASE + "targets:\n  pg:\n    kind: postgres\n    address: '::1:5432'\n", 8,
     "targets.pg.address", "needs brackets"),
    ("http issuer on non-loopback", BASE.replace("https://idp", "http://idp"), 4, "identity.oidc.issuer",
     "must use https"),
    ("alg none", BASE + "  machine_issuers:\n    - issuer: https://ci.example.com\n      audience: b\n"
     "      algorithms: [RS256, none]\n", 8, "identity.machine_issuers[0].algorithms[1]", "none is refused"),
    ("alg HS256", BASE.replace("client_id: bastion}", "client_id: bastion, algorithms: [HS256]}"), 4,
     "identity.oidc.algorithms[0]", "HS256 is refused"),
    ("unknown alg", BASE.replace("client_id: bastion}", "client_id: bastion, algorithms: [RS1]}"), 4,
     "identity.oidc.algorithms[0]", "expected one of: RS256"),
    ("scopes without openid", BASE.replace("client_id: bastion}", "client_id: bastion, scopes: [email]}"), 4,
     "identity.oidc.scopes", "must include openid"),
    ("machine issuer with client_id", BASE + "  machine_issuers:\n    - {issuer: 'https://ci', audience: a,"
     " client_id: c}\n", 6, "identity.machine_issuers[0].client_id", "unknown key"),
    ("machine issuer without audience", BASE + "  machine_issuers:\n    - issuer: https://ci.example.com\n", 6,
     "identity.machine_issuers[0].audience", "required key is missing"),
    ("inline password", BASE + "targets:\n  pg:\n    kind: postgres\n    address: db:5432\n    password: hunter2\n",
     9, "targets.pg.password", "secrets must be {env: NAME} or {file: PATH}, not inline"),
    ("secret with env and file", BASE + "targets:\n  pg:\n    kind: postgres\n    address: db:5432\n"
     "    password: {env: A, file: /b}\n", 9, "targets.pg.password", "exactly one of env or file"),
    ("default_ttl > max_ttl", BASE + "  certificates: {default_ttl: 9h, max_ttl: 8h}\n", 5,
     "identity.certificates.default_ttl", "default_ttl (9h) must not exceed max_ttl (8h)"),
    ("max_ttl over 7d", BASE + "  certificates:\n    max_ttl: 8d\n", 6, "identity.certificates.max_ttl",
     "must be at most 7d"),
    ("duplicate policy name", BASE + "policies:\n  - {name: p, subjects: {users: [a]}, targets: {names: ['*']},"
     " access: deny}\n  - {name: p, subjects: {users: [b]}, targets: {names: ['*']}, access: deny}\n", 7,
     "policies[1].name", "duplicate policy name 'p' (first at line 6)"),
    ("bad access", BASE + "policies:\n  - name: p\n    subjects: {users: [a]}\n    targets: {kinds: [ssh]}\n"
     "    access: maybe\n", 9, "policies[0].access", "expected one of: allow, approval, deny"),
    ("approval without approvers", BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
     "    targets: {names: ['*']}\n    access: approval\n    approval:\n      min_approvals: 1\n", 10,
     "policies[0].approval.approvers", "required key is missing"),
    ("approval with empty approvers", BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
     "    targets: {names: ['*']}\n    access: approval\n    approval: {approvers: {}}\n", 10,
     "policies[0].approval.approvers", "at least one user or group"),
    ("approval missing for access approval", BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
     "    targets: {names: ['*']}\n    access: approval\n", 6, "policies[0].approval",
     "required when access is approval"),
    ("approval block with access allow", BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
     "    targets: {names: ['*']}\n    access: allow\n    approval:\n      approvers: {groups: [sre]}\n", 10,
     "policies[0].approval", "allowed only when access is approval or a guardrail has effect review"),
    ("review guardrail without approvers", BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
     "    targets: {names: ['*']}\n    access: allow\n"
     "    guardrails:\n      - {effect: review, statements: [update]}\n", 6,
     "policies[0].approval", "required when a guardrail has effect review"),
    ("approval block with access deny", BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
     "    targets: {names: ['*']}\n    access: deny\n    approval:\n      approvers: {groups: [sre]}\n", 10,
     "policies[0].approval", "not allowed when access is deny"),
    ("min_approvals unreachable", BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
     "    targets: {names: ['*']}\n    access: approval\n    approval:\n      approvers: {users: [bob]}\n"
     "      min_approvals: 2\n", 12, "policies[0].approval.min_approvals", "cannot be met"),
    ("unknown statement kind", POLICY + "    guardrails:\n      - {effect: deny, statements: [drop, obliterate]}\n",
     11, "policies[0].guardrails[0].statements[1]", "expected a statement kind (alter, alter_system"),
    ("guardrail without criterion", POLICY + "    guardrails:\n      - {effect: deny, without_where: false}\n",
     11, "policies[0].guardrails[0]", "expected at least one of statements, tables or without_where: true"),
    ("guardrail without effect", POLICY + "    guardrails:\n      - {statements: [drop]}\n",
     11, "policies[0].guardrails[0].effect", "required key is missing"),
    ("guardrail bad effect", POLICY + "    guardrails:\n      - {effect: block, statements: [drop]}\n",
     11, "policies[0].guardrails[0].effect", "expected one of: allow, review, deny; got 'block'"),
    ("guardrail unknown key", POLICY + "    guardrails:\n      - effect: deny\n        statement: [drop]\n",
     12, "policies[0].guardrails[0].statement", "unknown key; expected one of: effect, statements, tables"),
    ("without_where on insert",
     POLICY + "    guardrails:\n      - {effect: deny, statements: [insert], without_where: true}\n",
     11, "policies[0].guardrails[0].without_where", "applies only to update and delete"),
    ("guardrails not a list", POLICY + "    guardrails: {effect: deny}\n",
     10, "policies[0].guardrails", "expected a list, got a mapping"),
    ("masking without criterion", POLICY + "    masking:\n      - {strategy: redact}\n",
     11, "policies[0].masking[0]", "expected at least one of columns or detect"),
    ("masking bad strategy", POLICY + "    masking:\n      - {strategy: scramble, columns: [a.b]}\n",
     11, "policies[0].masking[0].strategy", "expected one of: redact, partial, hash; got 'scramble'"),
    ("masking unknown detector", POLICY + "    masking:\n      - {strategy: redact, detect: [email, passport]}\n",
     11, "policies[0].masking[0].detect[1]", "unknown detector 'passport'"),
    ("masking column glob too deep", POLICY + "    masking:\n      - {strategy: redact, columns: [email, a.b.c.d]}\n",
     11, "policies[0].masking[0].columns[1]", "more than schema.table.column"),
    ("masking hash without key", POLICY + "    masking:\n      - {strategy: hash, columns: ['*.ssn']}\n",
     11, "policies[0].masking[0].strategy", "hash needs a key: set masking.hash_key"),
    ("detector bad regex", BASE + "masking:\n  detectors:\n    badge: 'B-[0-9'\n", 7, "masking.detectors.badge",
     "expected a regular expression"),
    ("detector matching empty", BASE + "masking:\n  detectors:\n    any: '.*'\n", 7, "masking.detectors.any",
     "must not match the empty string"),
    ("detector bad name", BASE + "masking:\n  detectors:\n    Badge-ID: 'B[0-9]+'\n", 7,
     "masking.detectors.Badge-ID", "detector names must match ^[a-z][a-z0-9_]*$"),
    ("detector shadows built-in", BASE + "masking:\n  detectors:\n    email: 'x@y'\n", 7, "masking.detectors.email",
     "email is a built-in detector"),
    ("masking hash_key inline", BASE + "masking:\n  hash_key: s3cret\n", 6, "masking.hash_key",
     "secrets must be {env: NAME} or {file: PATH}, not inline"),
    ("masking unknown key", BASE + "masking:\n  salt: {env: X}\n", 6, "masking.salt",
     "unknown key; expected one of: detectors, hash_key"),
    ("empty subjects", BASE + "policies:\n  - name: p\n    subjects: {}\n    targets: {names: ['*']}\n"
     "    access: allow\n", 7, "policies[0].subjects", "at least one user or group"),
    ("empty target selector", BASE + "policies:\n  - name: p\n    subjects: {users: [a]}\n    targets: {}\n"
     "    access: allow\n", 8, "policies[0].targets", 'use names: ["*"] for all targets'),
    ("bad kind in selector", BASE + "policies:\n  - name: p\n    subjects: {users: [a]}\n"
     "    targets: {kinds: [oracle]}\n    access: allow\n", 8, "policies[0].targets.kinds[0]", "expected one of"),
    ("bad target name", BASE + "targets:\n  PG_Prod:\n    kind: postgres\n    address: db:5432\n", 6,
     "targets.PG_Prod", "target names must match"),
    ("bad kind", BASE + "targets:\n  pg:\n    kind: oracle\n    address: db:5432\n", 7, "targets.pg.kind",
     "expected one of: postgres, mysql, kubernetes, ssh; got 'oracle'"),
    ("label value a list", BASE + "targets:\n  pg:\n    kind: postgres\n    address: db:5432\n"
     "    labels: {env: [a]}\n", 9, "targets.pg.labels.env", "expected a string, got a list"),
    ("merge key", BASE + "limits: &x {auth_attempts: 1}\ntargets:\n  <<: *x\n", 7, "targets",
     "merge keys (<<) are not supported"),
    ("duplicate key", BASE + "state_dir: /elsewhere\n", 5, "state_dir", "duplicate key (first at line 2)"),
    ("duplicate target", BASE + "targets:\n  pg: {kind: ssh, address: 'a:22'}\n  pg: {kind: ssh, address: 'b:22'}\n",
     7, "targets.pg", "duplicate key (first at line 6)"),
    ("public_url not http", BASE + "public_url: ftp://bastion\n", 5, "public_url", "expected an \"https://host\" URL"),
    ("empty host name", BASE + "host_names: [ok, '']\n", 5, "host_names[1]", "non-empty string"),
    ("empty host_names", BASE + "host_names: []\n", 5, "host_names", "at least one entry"),
    ("invalid YAML", BASE + "targets: [a\nb: c\n", 6, "", "invalid YAML: expected ',' or ']'"),
    ("top level not a mapping", "- a\n- b\n", 1, "", "expected a mapping, got a list"),
    ("empty file", "# nothing but a comment\n", 1, "", "the file is empty"),
    ("recording flush too slow", BASE + "recording:\n  flush_interval: 5s\n", 6, "recording.flush_interval",
     "at most 1s"),
    ("recording redaction not a flag", BASE + "recording: {redact_echo_off: sometimes}\n", 5,
     "recording.redact_echo_off", "true or false"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_config_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert (caught.value.line, caught.value.key) == (line, key), message
    assert message.startswith(f"{path}:{line}: {key}: " if key else f"{path}:{line}: "), message
    assert fragment in message


def test_inline_secret_error_does_not_echo_the_value(tmp_path: Path) -> None:
    text = BASE + "targets:\n  pg:\n    kind: postgres\n    address: db:5432\n    password: 'hunter2: x'\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert "hunter2" not in str(caught.value)


def test_invalid_yaml_error_does_not_quote_the_line(tmp_path: Path) -> None:
    text = BASE + "targets: {pg: {password: {env: s3cret-value]\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert "invalid YAML" in str(caught.value) and "s3cret" not in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read the configuration file: No such file or directory"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path)
    text = BASE.replace("/var/lib/bastion", "../state")
    text += "targets:\n  t: {kind: ssh, address: 'h:22', password: {file: k}}\n"
    config = load_config(write(tmp_path / "etc", text).relative_to(tmp_path))
    assert config.path == tmp_path.resolve() / "etc" / "bastion.yaml"
    assert config.state_dir == tmp_path.resolve() / "state"
    assert config.targets["t"].password == SecretRef(file=tmp_path.resolve() / "etc" / "k")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("8h", 28800.0), ("1d", 86400.0), ("1h30m", 5400.0),
     ("90", 90.0), ("1.5", 1.5), ("1d2h3m4s", 93784.0), ("0.5h", 1800.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "30m1h", "-1s", "1 h", "1h 30m", "inf"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", HostPort("127.0.0.1", 0)), ("db-1.internal:65535", HostPort("db-1.internal", 65535)),
     ("[::1]:22", HostPort("::1", 22)), ("[fe80::1%eth0]:22", HostPort("fe80::1%eth0", 22))],
)
def test_host_port(text: str, expected: HostPort) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize("text", ["db", "db:", ":22", "db:65536", "db:-1", "db:2a", "[::1]22", "[nope]:22", "a b:1"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        host_port(text)


def test_secret_from_environment() -> None:
    assert SecretRef(env="PG_PASSWORD").resolve({"PG_PASSWORD": "s3cret"}) == "s3cret"


@pytest.mark.parametrize("environ", [{}, {"PG_PASSWORD": ""}])
def test_secret_from_environment_unset_or_empty(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        SecretRef(env="PG_PASSWORD").resolve(environ)
    assert str(caught.value) == "environment: {env: PG_PASSWORD}: the variable is unset or empty"
    assert caught.value.line is None


def test_secret_from_private_file_strips_one_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret\n\n")
    path.chmod(0o600)
    assert SecretRef(file=path).resolve() == "s3cret\n"


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        SecretRef(file=path).resolve()
    message = str(caught.value)
    assert message == f"{path}: {{file: {path}}}: must not be readable by group or others (chmod 600)"
    assert "s3cret" not in message and caught.value.line is None


def test_secret_file_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the secret file: No such file or directory"):
        SecretRef(file=tmp_path / "missing").resolve()


def test_secret_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(ConfigError, match="expected a regular file"):
        SecretRef(file=path).resolve()


def test_secret_repr_never_shows_a_value() -> None:
    assert repr(SecretRef(env="PG_PASSWORD")) == "SecretRef(env='PG_PASSWORD')"


TEMPLATE_VALUES = {
    "@@SSH_LISTEN@@": "0.0.0.0:2222",
    "@@HTTP_LISTEN@@": "127.0.0.1:8080",
    "@@STATE_DIR@@": "/var/lib/bastion",
    "@@ISSUER@@": "https://idp.example.com",
    "@@CLIENT_ID@@": "bastion",
    "@@PG_DEMO_ADDRESS@@": "127.0.0.1:5432",
}


def test_template_loads_once_placeholders_are_replaced(tmp_path: Path) -> None:
    text = (Path(bastion.__file__).parent / "templates" / "bastion.yaml").read_text()
    for placeholder, value in TEMPLATE_VALUES.items():
        assert placeholder in text
        text = text.replace(placeholder, value)
    config = load_config(write(tmp_path, text))
    assert config.listen == Listen(ssh=HostPort("0.0.0.0", 2222), http=HostPort("127.0.0.1", 8080))
    assert config.state_dir == Path("/var/lib/bastion")
    assert config.identity.oidc.issuer == "https://idp.example.com"
    assert config.identity.oidc.client_id == "bastion"
    assert {n: (t.kind, t.address, t.labels) for n, t in config.targets.items()} == {
        "pg-demo": ("postgres", HostPort("127.0.0.1", 5432), {"env": "demo"}),
        "pg-prod": ("postgres", HostPort("127.0.0.1", 5432), {"env": "prod"}),
        "web-1": ("ssh", HostPort("127.0.0.1", 22), {"env": "prod"}),
    }
    by_name = {p.name: p for p in config.policies}
    assert by_name["dev-demo"].subjects.groups == ("dev",)
    assert by_name["dev-demo"].targets == TargetSelector(labels=(("env", "demo"),))
    assert by_name["dev-demo"].access is Access.ALLOW
    assert (by_name["sre-all"].targets.names, by_name["sre-all"].port_forwarding) == (("*",), True)
    approval = by_name["dev-prod-approval"]
    assert approval.access is Access.APPROVAL and approval.targets.labels == (("env", "prod"),)
    assert approval.approval is not None and approval.approval.approvers.groups == ("sre",)
    demo = by_name["dev-demo"]
    assert demo.guardrails[0] == Guardrail(StatementEffect.DENY, ("drop", "truncate", "alter_system"),
                                           name="dev-demo.guardrails[0]")
    assert demo.guardrails[1].without_where and demo.guardrails[1].statements == ("update", "delete")
    assert [(m.strategy, m.columns, m.detect) for m in demo.masking] == [
        ("partial", ("*.email",), ()), ("redact", (), ("credit_card", "ssn"))]
    assert [g.effect for g in approval.guardrails] == [StatementEffect.DENY, StatementEffect.DENY,
                                                       StatementEffect.REVIEW]


def test_detector_declared_in_config_is_usable(tmp_path: Path) -> None:
    text = BASE + ("masking:\n  detectors: {badge: 'B-[0-9]{4}'}\npolicies:\n  - name: p\n"
                   "    subjects: {groups: [dev]}\n    targets: {names: ['*']}\n    access: allow\n"
                   "    masking: [{strategy: redact, detect: [badge, ssn]}]\n")
    config = load_config(write(tmp_path, text))
    assert config.masking.detectors == {"badge": "B-[0-9]{4}"}
    assert config.policies[0].masking == (MaskingRule("redact", detect=("badge", "ssn"), name="p.masking[0]"),)


def test_documented_example_loads(tmp_path: Path) -> None:
    reference = (Path(bastion.__file__).parent.parent / "docs" / "configuration.md").read_text()
    example = reference.split("## Example\n\n```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, example))
    dba = next(p for p in config.policies if p.name == "dba-prod")
    assert [g.effect for g in dba.guardrails] == [StatementEffect.DENY, StatementEffect.DENY, StatementEffect.REVIEW]
    assert dba.masking[1].detect == ("credit_card", "employee_id")
    assert config.masking.hash_key == SecretRef(env="BASTION_MASKING_KEY")


# --- approvals: webhooks and the approve link ----------------------------------------------------

def test_approvals_section_defaults_to_no_webhooks(tmp_path: Path) -> None:
    from bastion.config import ApprovalsConfig

    config = load_config(write(tmp_path, BASE))
    assert config.approvals == ApprovalsConfig()
    assert config.approvals.webhook_urls() == () and config.approvals.link is None


def test_approvals_section_loads_urls_and_secret_refs(tmp_path: Path) -> None:
    from bastion.config import WebhookURL

    secret = tmp_path / "teams-url"
    secret.write_text("https://hooks.example.com/teams/abc?token=t0k\n")
    secret.chmod(0o600)
    text = BASE + textwrap.dedent("""\
        approvals:
          webhooks:
            - "http://127.0.0.1:9000/hook"
            - {url: "https://chat.example.com/hook?key=k"}
            - {url: {env: SLACK_APPROVALS_WEBHOOK}}
            - {file: teams-url}
          link: "https://bastion.example.com/approvals/{id}"
          retries: 0
          backoff: 2s
          max_backoff: 30s
          timeout: 5s
          queue_size: 10
          include_statement: false
        """)
    approvals = load_config(write(tmp_path, text)).approvals
    assert approvals.webhooks == (
        WebhookURL(url="http://127.0.0.1:9000/hook"), WebhookURL(url="https://chat.example.com/hook?key=k"),
        WebhookURL(secret=SecretRef(env="SLACK_APPROVALS_WEBHOOK")), WebhookURL(secret=SecretRef(file=secret)))
    assert (approvals.link, approvals.retries, approvals.backoff, approvals.max_backoff, approvals.timeout,
            approvals.queue_size, approvals.include_statement) == (
        "https://bastion.example.com/approvals/{id}", 0, 2.0, 30.0, 5.0, 10, False)
    urls = approvals.webhook_urls({"SLACK_APPROVALS_WEBHOOK": "https://hooks.slack.com/services/T0/B0/xyz"})
    assert urls == ("http://127.0.0.1:9000/hook", "https://chat.example.com/hook?key=k",
                    "https://hooks.slack.com/services/T0/B0/xyz", "https://hooks.example.com/teams/abc?token=t0k")
    shown = repr(approvals)
    assert "xyz" not in shown and "key=k" not in shown and "/hook" not in shown
    assert "{env: SLACK_APPROVALS_WEBHOOK}" in shown


def test_webhook_secret_that_is_not_a_url_names_the_entry_not_the_value(tmp_path: Path) -> None:
    text = BASE + "approvals:\n  webhooks:\n    - {env: HOOK}\n"
    path = write(tmp_path, text)
    approvals = load_config(path).approvals
    with pytest.raises(ConfigError) as caught:
        approvals.webhook_urls({"HOOK": "ftp://files.example.com/s3cr3t"})
    message = str(caught.value)
    assert message.startswith(f"{path}:7: approvals.webhooks[0]: the value of {{env: HOOK}}: expected an http(s)")
    assert "s3cr3t" not in message
    with pytest.raises(ConfigError, match="HOOK.*unset or empty"):
        approvals.webhook_urls({})


MALFORMED_APPROVALS = [
    ("unknown key", "approvals:\n  webhook: []\n", 6, "approvals.webhook", "unknown key; expected one of: backoff"),
    ("ftp URL", "approvals:\n  webhooks: ['ftp://hooks.example.com/x']\n", 6, "approvals.webhooks[0]",
     "expected an http(s) URL"),
    ("URL without host", "approvals:\n  webhooks:\n    - 'https:///path'\n", 7, "approvals.webhooks[0]",
     "expected an http(s) URL"),
    ("URL with fragment", "approvals:\n  webhooks: ['https://h.example.com/x#y']\n", 6, "approvals.webhooks[0]",
     "without credentials or fragment"),
    ("url and env together", "approvals:\n  webhooks:\n    - {url: 'https://h.example.com', env: X}\n", 7,
     "approvals.webhooks[0]", "either url or a secret reference"),
    ("unknown entry key", "approvals:\n  webhooks:\n    - {uri: 'https://h.example.com'}\n", 7,
     "approvals.webhooks[0].uri", "unknown key; expected one of: env, file, url"),
    ("bad env name in url", "approvals:\n  webhooks:\n    - url: {env: 'NO-DASH'}\n", 7,
     "approvals.webhooks[0].url.env", "expected an environment variable name"),
    ("listed twice", "approvals:\n  webhooks:\n    - {env: A}\n    - {url: {env: A}}\n", 8,
     "approvals.webhooks[1]", "listed twice (first as approvals.webhooks[0])"),
    ("webhooks not a list", "approvals:\n  webhooks: 'https://h.example.com'\n", 6, "approvals.webhooks",
     "expected a list, got a string"),
    ("link not http", "approvals:\n  link: 'mailto:ops@example.com'\n", 6, "approvals.link",
     "expected an http(s) URL"),
    ("link with other placeholder", "approvals:\n  link: 'https://b.example.com/{request}'\n", 6, "approvals.link",
     "expected {id} as the only placeholder"),
    ("negative retries", "approvals:\n  retries: -1\n", 6, "approvals.retries", "expected an integer >= 0"),
    ("backoff over max", "approvals: {backoff: 2m, max_backoff: 1m}\n", 5, "approvals.backoff",
     "backoff must not exceed max_backoff"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [c[1:] for c in MALFORMED_APPROVALS],
                         ids=[c[0] for c in MALFORMED_APPROVALS])
def test_malformed_approvals_section_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    test_malformed_config_names_file_line_and_key(tmp_path, BASE + text, line, key, fragment)


def test_inline_webhook_url_error_does_not_echo_the_url(tmp_path: Path) -> None:
    text = BASE + "approvals:\n  webhooks: ['gopher://hooks.example.com/T00/B00/s3cr3t']\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert "s3cr3t" not in str(caught.value)


def test_an_allow_policy_with_review_guardrails_names_its_reviewers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "policies:\n  - name: p\n    subjects: {groups: [dev]}\n"
                                          "    targets: {names: ['*']}\n    access: allow\n"
                                          "    approval: {approvers: {groups: [dba]}, min_approvals: 2}\n"
                                          "    guardrails:\n      - {effect: review, statements: [update]}\n"))
    rule = config.policies[0].approval
    assert rule is not None and rule.approvers.groups == ("dba",) and rule.min_approvals == 2
