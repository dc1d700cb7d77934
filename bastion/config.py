"""bastion.yaml -> typed, validated configuration.

Config is data, validated once: :func:`load_config` reads the YAML, checks every
key, and returns frozen objects. Every error names ``file:line``, the key and
what was expected. Secrets are never inline: they are ``{env: NAME}`` or
``{file: PATH}`` references, resolved only when a proxy needs them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from policies.model import Policy, Target

DEFAULT_CONFIG_PATH = "/etc/bastion/bastion.yaml"
TARGET_KINDS = ("postgres", "mysql", "kubernetes", "ssh")


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
        raise NotImplementedError  # filled in by the loader helper below

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

    @property
    def target(self) -> Target:
        """The credential-free view that policy decisions use."""
        return Target(self.name, self.kind, dict(self.labels))


@dataclass(frozen=True)
class Config:
    path: Path
    listen: Listen
    state_dir: Path
    identity: Identity
    host_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    public_url: str | None = None     # how clients reach the HTTP listener; default http://<listen.http>
    limits: Limits = Limits()
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    policies: tuple[Policy, ...] = ()

    @property
    def http_url(self) -> str:
        """The base URL that login clients use."""
        return (self.public_url or f"http://{self.listen.http}").rstrip("/")


def config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: -c, then $BASTION_CONFIG, then /etc/bastion/bastion.yaml."""
    env = os.environ if environ is None else environ
    return Path(cli_value or env.get("BASTION_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a bastion.yaml. Raises ConfigError naming file:line, key and expectation."""
    raise NotImplementedError  # filled in by the loader helper
