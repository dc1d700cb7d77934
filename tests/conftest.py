"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oidc_issuer import OidcIssuer

# Test modules import helpers from this plugin before pytest loads it as one: rewrite its asserts all the same.
pytest.register_assert_rewrite("sshd_fixtures")


@pytest.fixture(scope="session")
def oidc_issuer() -> Iterator[OidcIssuer]:
    """A real development OIDC issuer on loopback, shared by the whole session."""
    with OidcIssuer() as issuer:
        yield issuer
