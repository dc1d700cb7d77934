"""bastion.yaml -> typed, validated configuration.

Config is data, validated once: :func:`load_config` reads the YAML, checks every
key, and returns frozen objects. Every error names ``file:line``, the key and
what was expected. Secrets are never inline: they are ``{env: NAME}`` or
``{file: PATH}`` references, resolved only when a proxy needs them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh

from bastion.config_policies import TARGET_KINDS, load_policies
from bastion.config_schema import (
    Node,
    format_duration,
    parse_address,
    parse_link,
    parse_url,
    parse_webhook_url,
    read_secret_file,
    read_yaml,
)
from bastion.errors import ConfigError
from policies.detectors import DetectorError, custom_detector
from policies.masking import BUILTIN_DETECTORS
from policies.model import Policy, Target

DEFAULT_CONFIG_PATH = "/etc/bastion/bastion.yaml"


@dataclass(frozen=True)
class HostPort:
    """A listen or target address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives. The value is read on demand and never stored in config objects."""

    env: str | None = None
    file: Path | None = None

    def resolve(self, environ: Mapping[str, str] | None = None) -> str:
        """Read the secret now. Raises BastionError (ConfigError) naming the reference, never the value."""
        if self.env is not None:
            value = (os.environ if environ is None else environ).get(self.env, "")
            if not value:
                raise ConfigError("environment", None, self.describe(), "the variable is unset or empty")
            return value
        if self.file is not None:
            return read_secret_file(self.file, self.describe())
        raise ConfigError("secret", None, self.describe(), "expected exactly one of env or file")

    def describe(self) -> str:
        """Where the secret lives, as written in YAML: safe to show."""
        return f"{{env: {self.env}}}" if self.env else f"{{file: {self.file}}}"

    def __repr__(self) -> str:  # never print a value, only where it comes from
        return f"SecretRef(env={self.env!r})" if self.env else f"SecretRef(file={str(self.file)!r})"


@dataclass(frozen=True)
class Listen:
    ssh: HostPort
    http: HostPort


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted OIDC issuer: the people's IdP, or a machine-identity issuer (CI, workloads)."""

    issuer: str
    audience: str
    client_id: str | None = None          # only the people's IdP has one (login client)
    native_client_secret: SecretRef | None = None  # for IdPs that insist on a secret for native apps
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    username_claim: str = "preferred_username"
    username_domain: str | None = None    # when set, the claim must be ...@domain and the domain is stripped
    username_prefix: str = ""             # e.g. "ci-" so machine names never collide with people
    groups_claim: str | None = "groups"
    groups_prefix: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway: float = 60.0                  # seconds of clock skew tolerated on exp/iat/nbf


@dataclass(frozen=True)
class CertificatePolicy:
    default_ttl: float = 3600.0   # seconds
    max_ttl: float = 8 * 3600.0   # seconds


@dataclass(frozen=True)
class Identity:
    oidc: IssuerConfig
    machine_issuers: tuple[IssuerConfig, ...] = ()
    certificates: CertificatePolicy = CertificatePolicy()


@dataclass(frozen=True)
class Limits:
    auth_attempts: int = 6
    login_timeout: float = 30.0
    sessions_per_user: int = 10
    connections_per_source: int = 50


@dataclass(frozen=True)
class RecordingConfig:
    """How sessions are recorded (every session is; these tune how)."""

    redact_echo_off: bool = True   # keystrokes the session does not echo are written as a redaction marker
    flush_interval: float = 1.0    # seconds; a crash loses at most this much of a recording
    idle_time_limit: float | None = 2.0  # written to each cast's header: players cap pauses to this


@dataclass(frozen=True)
class TargetConfig:
    """A configured target: what policy sees (:attr:`target`) plus how to reach it."""

    name: str
    kind: str
    address: HostPort
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""
    database: str | None = None
    user: str | None = None
    password: SecretRef | None = None
    login: str | None = None               # ssh: the account the bastion logs in to on the target
    host_key: str | None = None            # ssh: the target's pinned host public key, one OpenSSH line
    host_ca: str | None = None             # ssh: or the CA that signs the target's host certificate
    identity: SecretRef | None = None      # ssh: a private key, for hosts that cannot trust the target CA

    @property
    def target(self) -> Target:
        """The credential-free view that policy decisions use."""
        return Target(self.name, self.kind, dict(self.labels))


@dataclass(frozen=True)
class MaskingConfig:
    """Deployment-wide masking settings: the key of the hash strategy and extra value detectors."""

    hash_key: SecretRef | None = None                          # HMAC key, so hashed values correlate across sessions
    detectors: dict[str, str] = field(default_factory=dict)    # name -> regular expression (Python re syntax)


@dataclass(frozen=True)
class WebhookURL:
    """One webhook receiver: a URL written in the file, or a secret reference that holds one.

    Slack's webhook URLs carry their token in the path, so a secret reference is
    the better choice; a written URL is never shown whole either.
    """

    url: str | None = None
    secret: SecretRef | None = None
    # Where the entry is written, to place an error about a secret's value (not part of equality).
    file: str = field(default="bastion.yaml", compare=False)
    line: int | None = field(default=None, compare=False)
    key: str = field(default="approvals.webhooks", compare=False)

    def resolve(self, environ: Mapping[str, str] | None = None) -> str:
        """The URL to POST to; a secret's value is read now and must be an http(s) URL."""
        if self.url is not None:
            return self.url
        if self.secret is None:
            raise ConfigError(self.file, self.line, self.key, "expected a URL or a secret reference")
        value = self.secret.resolve(environ).strip()
        try:
            return parse_webhook_url(value)
        except ValueError as e:  # the message never quotes the value
            raise ConfigError(self.file, self.line, self.key, f"the value of {self.secret.describe()}: {e}") from None

    def describe(self) -> str:
        """Safe to show: the secret reference, or the written URL's scheme and host only."""
        if self.secret is not None:
            return self.secret.describe()
        parts = urlsplit(self.url or "")
        return f"{parts.scheme}://{parts.hostname or '?'}/…"

    def __repr__(self) -> str:  # a webhook URL is a credential; show only where it comes from
        return f"WebhookURL({self.describe()})"


@dataclass(frozen=True)
class ApprovalsConfig:
    """Notifications about approval requests: Slack-compatible webhooks (the daemon builds WebhookSettings)."""

    webhooks: tuple[WebhookURL, ...] = ()
    link: str | None = None            # "https://bastion.example.com/approvals/{id}"; {id} is the request id
    retries: int = 5                   # attempts after the first
    backoff: float = 1.0               # seconds before the first retry; doubles each time
    max_backoff: float = 60.0
    timeout: float = 10.0              # seconds for one attempt
    queue_size: int = 1000
    include_statement: bool = True     # show a held statement's text (truncated) to the approvers

    def webhook_urls(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """Every receiver's URL, secrets read now; raises ConfigError naming the reference, never the value."""
        return tuple(w.resolve(environ) for w in self.webhooks)


@dataclass(frozen=True)
class Config:
    path: Path
    listen: Listen
    state_dir: Path
    identity: Identity
    host_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    public_url: str | None = None     # how clients reach the HTTP listener; default http://<listen.http>
    limits: Limits = Limits()
    recording: RecordingConfig = RecordingConfig()
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    policies: tuple[Policy, ...] = ()
    masking: MaskingConfig = MaskingConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()

    @property
    def http_url(self) -> str:
        """The base URL that login clients use."""
        return (self.public_url or f"http://{self.listen.http}").rstrip("/")


def config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: -c, then $BASTION_CONFIG, then /etc/bastion/bastion.yaml."""
    env = os.environ if environ is None else environ
    return Path(cli_value or env.get("BASTION_CONFIG") or DEFAULT_CONFIG_PATH)


def host_port(text: str) -> HostPort:
    """Parse "host:port" or "[IPv6]:port"; raises ValueError."""
    return HostPort(*parse_address(text))


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a bastion.yaml. Raises ConfigError naming file:line, key and expectation.

    Secrets are only references here; ``environ`` is accepted for symmetry with
    :meth:`SecretRef.resolve`, which reads them when a proxy needs them.
    """
    del environ  # nothing in the file is expanded from the environment at load time
    file = os.fspath(path)
    root = read_yaml(file)
    base = Path(file).resolve().parent
    top = root.fields(_TOP_KEYS, required=("listen", "state_dir", "identity"))
    masking = _masking(top["masking"], base) if "masking" in top else MaskingConfig()
    return Config(
        path=Path(file).resolve(),
        listen=_listen(top["listen"]),
        state_dir=_path(top["state_dir"], base),
        identity=_identity(top["identity"], base),
        host_names=top["host_names"].names(non_empty=True) if "host_names" in top else Config.host_names,
        public_url=top["public_url"].parse(parse_url) if "public_url" in top else None,
        limits=_limits(top["limits"]) if "limits" in top else Limits(),
        recording=_recording(top["recording"]) if "recording" in top else RecordingConfig(),
        targets=_targets(top["targets"], base) if "targets" in top else {},
        policies=load_policies(top["policies"], detectors=masking.detectors,
                               has_hash_key=masking.hash_key is not None) if "policies" in top else (),
        masking=masking,
        approvals=_approvals(top["approvals"], base) if "approvals" in top else ApprovalsConfig(),
    )


# The loader. Each function below turns one section's node into its typed value.

_TOP_KEYS = ("listen", "state_dir", "public_url", "host_names", "identity", "limits", "recording", "targets",
             "policies", "masking", "approvals")
_SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_MAX_CERT_TTL = 7 * 86400.0
_TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INLINE_SECRET = "secrets must be {env: NAME} or {file: PATH}, not inline"
_DETECTOR_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _path(node: Node, base: Path) -> Path:
    path = Path(node.name())
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def _listen(node: Node) -> Listen:
    f = node.fields(("ssh", "http"), required=("ssh", "http"))
    return Listen(ssh=f["ssh"].parse(host_port), http=f["http"].parse(host_port))


def _algorithms(node: Node) -> tuple[str, ...]:
    algorithms = node.names(non_empty=True)
    for item, alg in zip(node.items(), algorithms, strict=True):
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise item.error(f"{alg} is refused: tokens must be signed with the issuer's public key")
        if alg not in _SIGNING_ALGORITHMS:
            raise item.error(f"expected one of: {', '.join(_SIGNING_ALGORITHMS)}; got {alg!r}")
    return algorithms


def _scopes(node: Node) -> tuple[str, ...]:
    scopes = node.names()
    if "openid" not in scopes:
        raise node.error("must include openid")
    return scopes


def _groups_claim(node: Node) -> str | None:
    return None if node.is_null else node.name()


def _issuer_parsers(base: Path) -> dict[str, Callable[[Node], Any]]:
    return {
        "issuer": lambda n: n.parse(lambda s: parse_url(s, https_only=True)),
        "audience": Node.name,
        "client_id": Node.name,
        "native_client_secret": lambda n: _secret(n, base),
        "scopes": _scopes,
        "username_claim": Node.name,
        "username_domain": Node.name,
        "username_prefix": Node.text,
        "groups_claim": _groups_claim,
        "groups_prefix": Node.text,
        "algorithms": _algorithms,
        "leeway": lambda n: n.duration(positive=False),
    }


def _issuer(node: Node, base: Path, *, people: bool) -> IssuerConfig:
    parsers = _issuer_parsers(base)
    if not people:  # machine identities have no login client
        for key in ("client_id", "native_client_secret", "scopes"):
            del parsers[key]
    required = ("issuer", "client_id") if people else ("issuer", "audience")
    kwargs = {key: parsers[key](value) for key, value in node.fields(parsers, required).items()}
    kwargs.setdefault("audience", kwargs.get("client_id"))
    return IssuerConfig(**kwargs)


def _certificates(node: Node) -> CertificatePolicy:
    f = node.fields(("default_ttl", "max_ttl"))
    default_ttl = f["default_ttl"].duration() if "default_ttl" in f else CertificatePolicy.default_ttl
    max_ttl = f["max_ttl"].duration() if "max_ttl" in f else CertificatePolicy.max_ttl
    if max_ttl > _MAX_CERT_TTL:
        raise f["max_ttl"].error(f"must be at most 7d, got {format_duration(max_ttl)}")
    if default_ttl > max_ttl:
        culprit = f.get("default_ttl") or f["max_ttl"]
        raise culprit.error(f"default_ttl ({format_duration(default_ttl)}) must not exceed "
                            f"max_ttl ({format_duration(max_ttl)})")
    return CertificatePolicy(default_ttl=default_ttl, max_ttl=max_ttl)


def _identity(node: Node, base: Path) -> Identity:
    f = node.fields(("oidc", "machine_issuers", "certificates"), required=("oidc",))
    machines = f["machine_issuers"].items() if "machine_issuers" in f else []
    return Identity(
        oidc=_issuer(f["oidc"], base, people=True),
        machine_issuers=tuple(_issuer(n, base, people=False) for n in machines),
        certificates=_certificates(f["certificates"]) if "certificates" in f else CertificatePolicy(),
    )


_LIMIT_PARSERS: dict[str, Callable[[Node], Any]] = {
    "auth_attempts": Node.integer,
    "login_timeout": Node.duration,
    "sessions_per_user": Node.integer,
    "connections_per_source": Node.integer,
}


def _limits(node: Node) -> Limits:
    return Limits(**{key: _LIMIT_PARSERS[key](value) for key, value in node.fields(_LIMIT_PARSERS).items()})


_RECORDING_PARSERS: dict[str, Callable[[Node], Any]] = {
    "redact_echo_off": Node.flag,
    "flush_interval": Node.duration,
    "idle_time_limit": Node.duration,
}


def _recording(node: Node) -> RecordingConfig:
    fields = node.fields(_RECORDING_PARSERS)
    values = {key: _RECORDING_PARSERS[key](value) for key, value in fields.items()}
    if values.get("flush_interval", 1.0) > 1.0:
        raise fields["flush_interval"].error("expected at most 1s: a crash may lose at most a second of a recording")
    return RecordingConfig(**values)


def _secret(node: Node, base: Path) -> SecretRef:
    if not node.is_mapping:
        raise node.error(_INLINE_SECRET)
    f = node.fields(("env", "file"))
    if len(f) != 1:
        raise node.error("expected exactly one of env or file")
    if "file" in f:
        return SecretRef(file=_path(f["file"], base))
    env = f["env"]
    if not _ENV_NAME.fullmatch(env.text()):
        raise env.error("expected an environment variable name (letters, digits and _)")
    return SecretRef(env=env.text())


_SSH_KEYS = ("login", "host_key", "host_ca", "identity")


def _public_key(node: Node, base: Path) -> str:
    """A public key, written inline in OpenSSH one-line format or as ``{file: PATH}``; normalised."""
    if node.is_mapping:
        path = _path(node.fields(("file",), required=("file",))["file"], base)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise node.error(f"cannot read public key file {path}: {getattr(e, 'strerror', None) or e}") from e
    else:
        text = node.text()
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise node.error("expected one public key in OpenSSH format (ssh-ed25519 AAAA...), inline or {file: PATH}")
    try:
        key = asyncssh.import_public_key(lines[0])
    except (asyncssh.KeyImportError, ValueError) as e:
        raise node.error(f"expected a public key in OpenSSH format (ssh-ed25519 AAAA...): {e}") from e
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]  # the comment is not the key
    return f"{algorithm} {blob}"


def _ssh_fields(f: dict[str, Node], kind: str, base: Path) -> dict[str, Any]:
    """The SSH target keys: login, and at most one of host_key and host_ca (connecting needs one)."""
    present = [key for key in _SSH_KEYS if key in f]
    if kind != "ssh":
        if present:
            raise f[present[0]].error(f"only ssh targets take {present[0]}", at_key=True)
        return {}
    if "host_key" in f and "host_ca" in f:
        raise f["host_ca"].error("expected one of host_key or host_ca, not both", at_key=True)
    return {
        "login": f["login"].name() if "login" in f else None,
        "host_key": _public_key(f["host_key"], base) if "host_key" in f else None,
        "host_ca": _public_key(f["host_ca"], base) if "host_ca" in f else None,
        "identity": _secret(f["identity"], base) if "identity" in f else None,
    }


def _target(name: str, node: Node, base: Path) -> TargetConfig:
    keys = ("kind", "address", "labels", "description", "database", "user", "password", *_SSH_KEYS)
    f = node.fields(keys, required=("kind", "address"))
    kind = f["kind"].choice(TARGET_KINDS)
    return TargetConfig(
        name=name,
        kind=kind,
        address=f["address"].parse(host_port),
        labels=f["labels"].labels() if "labels" in f else {},
        description=f["description"].text() if "description" in f else "",
        database=f["database"].name() if "database" in f else None,
        user=f["user"].name() if "user" in f else None,
        password=_secret(f["password"], base) if "password" in f else None,
        **_ssh_fields(f, kind, base),
    )


def _targets(node: Node, base: Path) -> dict[str, TargetConfig]:
    targets = {}
    for name, value in node.pairs("a mapping of target names to targets"):
        if not _TARGET_NAME.fullmatch(name):
            raise value.error(f"target names must match ^{_TARGET_NAME.pattern}$", at_key=True)
        targets[name] = _target(name, value, base)
    return targets


def _masking(node: Node, base: Path) -> MaskingConfig:
    f = node.fields(("hash_key", "detectors"))
    detectors = {}
    pairs = f["detectors"].pairs("a mapping of detector names to regular expressions") if "detectors" in f else []
    for name, value in pairs:
        if not _DETECTOR_NAME.fullmatch(name):
            raise value.error(f"detector names must match ^{_DETECTOR_NAME.pattern}$", at_key=True)
        if name in BUILTIN_DETECTORS:
            raise value.error(f"{name} is a built-in detector; choose another name", at_key=True)
        detectors[name] = _regex(name, value)
    return MaskingConfig(hash_key=_secret(f["hash_key"], base) if "hash_key" in f else None, detectors=detectors)


def _regex(name: str, node: Node) -> str:
    pattern = node.text()
    try:
        custom_detector(name, pattern)  # compiles it as the masking engine will
    except DetectorError as e:
        raise node.error(f"expected a regular expression: {e.__cause__ or e}") from e
    if re.fullmatch(pattern, ""):
        raise node.error("the regular expression must not match the empty string")
    return pattern


_APPROVALS_PARSERS: dict[str, Callable[[Node], Any]] = {
    "link": lambda n: n.parse(parse_link),
    "retries": lambda n: n.integer(minimum=0),
    "backoff": Node.duration,
    "max_backoff": Node.duration,
    "timeout": Node.duration,
    "queue_size": Node.integer,
    "include_statement": Node.flag,
}


def _approvals(node: Node, base: Path) -> ApprovalsConfig:
    f = node.fields(("webhooks", *_APPROVALS_PARSERS))
    values = {key: _APPROVALS_PARSERS[key](value) for key, value in f.items() if key != "webhooks"}
    if values.get("backoff", ApprovalsConfig.backoff) > values.get("max_backoff", ApprovalsConfig.max_backoff):
        culprit = f.get("backoff") or f["max_backoff"]
        raise culprit.error("backoff must not exceed max_backoff")
    webhooks: list[WebhookURL] = []
    seen: dict[str, str] = {}
    for item in f["webhooks"].items() if "webhooks" in f else []:
        webhook = _webhook(item, base)
        same = webhook.url or repr(webhook.secret)
        if same in seen:
            raise item.error(f"the same receiver is listed twice (first as {seen[same]})")
        seen[same] = item.key
        webhooks.append(webhook)
    return ApprovalsConfig(webhooks=tuple(webhooks), **values)


def _webhook(node: Node, base: Path) -> WebhookURL:
    """A URL, ``{url: URL or secret}``, or a secret reference (``{env: NAME}``, ``{file: PATH}``)."""
    if node.is_mapping:
        f = node.fields(("url", "env", "file"))
        if "url" in f and len(f) > 1:
            raise node.error("expected either url or a secret reference ({env: NAME} or {file: PATH}), not both")
        node = f.get("url", node)
    if node.is_mapping:
        return WebhookURL(secret=_secret(node, base), file=node.file, line=node.line, key=node.key)
    return WebhookURL(url=node.parse(parse_webhook_url), file=node.file, line=node.line, key=node.key)
