"""The CLIs: every command has help text and documentation; errors map to exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bastion.cli import build_parser, main

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_has_help_and_is_documented() -> None:
    reference = (DOCS / "cli.md").read_text()
    for name, sub in _subcommands().items():
        assert sub.description, f"bastion {name} has no help text"
        assert f"bastion {name}" in reference, f"bastion {name} is not in docs/cli.md"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"bastion {name} {action.option_strings} has no help"


def test_config_errors_exit_2_with_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text("state_dir: s\nidentity: {oidc: {issuer: 'https://idp.example', client_id: b}}\n"
                      "listen:\n  ssh: 'no-port-here'\n  http: '127.0.0.1:1'\n")
    assert main(["check-config", "-c", str(config)]) == 2
    assert f"{config}:4: listen.ssh:" in capsys.readouterr().err


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "missing.yaml"))
    assert main(["check-config"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_audit_since_accepts_durations_and_dates() -> None:
    from bastion.cli import _since

    assert _since("2h", 10_000.0) == 10_000.0 - 7200
    assert _since("2026-11-29", 0) == 1795910400.0
    with pytest.raises(Exception, match="neither a duration"):
        _since("yesterday-ish", 0)
