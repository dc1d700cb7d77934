"""Fixtures for whole flows: a running bastion and a person's machine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from oidc_issuer import OidcIssuer
from peers import Bastion, Client, have, new_bastion


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not have("ssh"):
        skip = pytest.mark.skip(reason="OpenSSH client (ssh) is not installed; `make test` installs it")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def bastion(tmp_path_factory: pytest.TempPathFactory, oidc_issuer: OidcIssuer) -> Iterator[Bastion]:
    """A bastion with the standard test targets and policies, shared by a module."""
    b = new_bastion(tmp_path_factory.mktemp("bastion"), oidc_issuer.issuer)
    yield b
    b.stop()


@pytest.fixture
def make_bastion(tmp_path: Path, oidc_issuer: OidcIssuer) -> Iterator[Callable[..., Bastion]]:
    """Start a bastion with config overrides (limits=..., certificates=...); stopped after the test."""
    started: list[Bastion] = []

    def make(**config: str) -> Bastion:
        b = new_bastion(tmp_path / f"bastion{len(started)}", oidc_issuer.issuer, **config)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def client(tmp_path: Path, bastion: Bastion) -> Client:
    """A fresh person's machine pointed at the module's bastion."""
    return Client(tmp_path / "home", bastion)
