"""The client side of ``bastion login``: OAuth flows against the dev IdP, key, certificate, known_hosts, agent."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncssh
import jwt
import pytest

from bastion.devidp import DevIdentityProvider
from bastion.errors import LoginError
from bastion.login import (
    add_to_agent,
    certificate_path_for,
    format_summary,
    load_or_create_key,
    login,
    update_known_hosts,
    write_certificate,
)
from bastion.login_flows import (
    IssuerInfo,
    TokenResult,
    can_open_browser,
    choose_flow,
    discover_issuer,
    obtain_id_token,
    pkce_pair,
    require_secure_url,
)

# --- key -------------------------------------------------------------------------------------


def test_key_is_generated_0600_openssh_and_reused(tmp_path: Path) -> None:
    key_path = tmp_path / "ssh" / "id_ed25519"
    first = load_or_create_key(key_path, comment="alice@test")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    first_line = key_path.read_text().splitlines()[0]  # the OpenSSH private-key armour, not PEM/PKCS8
    assert first_line.startswith("-----BEGIN OPENSSH ") and first_line.endswith(" KEY-----")
    pub = (tmp_path / "ssh" / "id_ed25519.pub").read_text()
    assert pub.startswith("ssh-ed25519 ") and pub.strip().endswith("alice@test")
    before = key_path.read_bytes()
    second = load_or_create_key(key_path, comment="other")
    assert key_path.read_bytes() == before
    assert second.public_data == first.public_data
    # ssh-keygen agrees it is a valid OpenSSH key for the same public key
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key_path)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[1] == pub.split()[1]


def test_key_without_pub_is_derived_from_private(tmp_path: Path) -> None:
    key_path = tmp_path / "id_ed25519"
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(key_path))
    assert load_or_create_key(key_path, comment="x").public_data == key.public_data
    assert not (tmp_path / "id_ed25519.pub").exists()


def test_passphrase_key_without_pub_is_refused_with_a_fix(tmp_path: Path) -> None:
    key_path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key_path)], check=True)
    with_pub = load_or_create_key(key_path, comment="x")
    assert with_pub.algorithm == b"ssh-ed25519"
    (tmp_path / "id_ed25519.pub").unlink()
    with pytest.raises(LoginError, match=r"passphrase.*ssh-keygen -y -f"):
        load_or_create_key(key_path, comment="x")


def test_stray_pub_without_private_key_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAA hardware\n")
    with pytest.raises(LoginError, match="exists but its private key"):
        load_or_create_key(tmp_path / "id_ed25519", comment="x")
    assert (tmp_path / "id_ed25519.pub").read_text() == "ssh-ed25519 AAAA hardware\n"


# --- certificate ----------------------------------------------------------------------------


def _certificate_for(key: asyncssh.SSHKey, principal: str = "alice", hours: int = 8) -> str:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_user_certificate(key, "test", principals=[principal], valid_before=f"+{hours}h")
    return cert.export_certificate("openssh").decode()


def test_certificate_is_written_atomically_next_to_the_key(tmp_path: Path) -> None:
    key_path = tmp_path / "id_ed25519"
    key = load_or_create_key(key_path, comment="x")
    cert_path = certificate_path_for(key_path)
    assert cert_path == tmp_path / "id_ed25519-cert.pub"
    cert_path.write_text("old certificate\n")
    old_inode = cert_path.stat().st_ino
    line = _certificate_for(asyncssh.read_private_key(str(key_path)))
    assert write_certificate(key_path, line) == cert_path
    assert cert_path.read_text() == line.strip() + "\n"
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    # a rename, not an in-place rewrite: a reader never sees a half-written file
    assert cert_path.stat().st_ino != old_inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id_ed25519", "id_ed25519-cert.pub", "id_ed25519.pub"]
    assert asyncssh.read_certificate(str(cert_path)).key.public_data == key.public_data


# --- known_hosts ----------------------------------------------------------------------------

CA1 = "@cert-authority [bastion.example]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIONE host-ca"
CA2 = "@cert-authority [bastion.example]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITWO host-ca"
OTHER = "@cert-authority *.corp ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHER other-ca"
PLAIN = "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGITHUB"


def test_known_hosts_created_with_ssh_dir_0700(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".ssh" / "known_hosts"
    assert update_known_hosts(path, CA1 + "\n") == "added"
    assert path.read_text() == CA1 + "\n"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_known_hosts_add_is_idempotent_and_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"{PLAIN}\n{OTHER}\n")
    path.chmod(0o600)
    assert update_known_hosts(path, CA1) == "added"
    assert update_known_hosts(path, CA1) == "unchanged"
    assert path.read_text().splitlines() == [PLAIN, OTHER, CA1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_known_hosts_replaces_a_rotated_host_ca(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"{CA1}\n{PLAIN}\n{OTHER}\n")
    assert update_known_hosts(path, CA2) == "replaced"
    assert path.read_text().splitlines() == [PLAIN, OTHER, CA2]


def test_known_hosts_refuses_a_line_that_is_not_a_cert_authority(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    with pytest.raises(LoginError, match="malformed known_hosts"):
        update_known_hosts(path, PLAIN)
    assert not path.exists()


# --- ssh-agent ------------------------------------------------------------------------------


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[dict[str, str]]:
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("OpenSSH ssh-agent/ssh-add not installed")
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            proc.poll()
            assert proc.returncode is None, "ssh-agent exited"
            time.sleep(0.01)
        yield {"SSH_AUTH_SOCK": str(sock), "PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path)}
    finally:
        proc.terminate()
        proc.wait()


def test_agent_gets_key_and_certificate(tmp_path: Path, ssh_agent: dict[str, str]) -> None:
    key_path = tmp_path / "id_ed25519"
    load_or_create_key(key_path, comment="x")
    write_certificate(key_path, _certificate_for(asyncssh.read_private_key(str(key_path))))
    asyncio.run(add_to_agent(key_path, 300, ssh_agent))
    listed = subprocess.run(["ssh-add", "-l"], env=ssh_agent, capture_output=True, text=True, check=True).stdout
    assert "ED25519-CERT" in listed and "ED25519)" in listed


def test_agent_without_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LoginError, match="SSH_AUTH_SOCK is not set"):
        asyncio.run(add_to_agent(tmp_path / "id_ed25519", 300, {"PATH": os.defpath}))


def test_agent_failure_is_a_login_error(tmp_path: Path, ssh_agent: dict[str, str]) -> None:
    with pytest.raises(LoginError, match="ssh-add could not load"):
        asyncio.run(add_to_agent(tmp_path / "missing", 300, ssh_agent))


# --- small pure parts -----------------------------------------------------------------------


def test_summary_names_user_groups_and_expiry() -> None:
    now = datetime(2026, 11, 29, 10, 2, 1, tzinfo=UTC)
    line = format_summary("alice", ("dev", "sre"), now + timedelta(hours=8), now)
    assert line == "Logged in as alice (groups: dev, sre); certificate valid until 2026-11-29 18:02 UTC (8h)."
    assert format_summary("bob", (), now + timedelta(minutes=90), now) == (
        "Logged in as bob; certificate valid until 2026-11-29 11:32 UTC (1h 30m).")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.9.9.9", "http://[::1]:80/x",
                                 "http://localhost:1", "https://bastion.example"])
def test_secure_or_loopback_urls_are_accepted(url: str) -> None:
    assert require_secure_url(url, "bastion URL") == url


@pytest.mark.parametrize("url", ["http://bastion.example", "http://10.0.0.1", "ftp://x", "bastion.example",
                                 "http://localhost.evil.example"])
def test_plain_http_off_loopback_is_refused(url: str) -> None:
    with pytest.raises(LoginError, match="must be an https URL"):
        require_secure_url(url, "bastion URL")


def test_pkce_challenge_is_s256_of_verifier() -> None:
    import base64
    import hashlib
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected


def _info(code: bool = True, device: bool = True) -> IssuerInfo:
    return IssuerInfo(issuer="https://idp.example", client_id="bastion", scopes=("openid",),
                      token_endpoint="https://idp.example/token",
                      authorization_endpoint="https://idp.example/authorize" if code else None,
                      device_authorization_endpoint="https://idp.example/device" if device else None)


def test_flow_choice() -> None:
    assert choose_flow(_info(), "auto", browser=True) == "code"
    assert choose_flow(_info(), "auto", browser=False) == "device"
    assert choose_flow(_info(device=False), "auto", browser=False) == "code"  # prints the URL instead
    assert choose_flow(_info(code=False), "auto", browser=True) == "device"
    assert choose_flow(_info(), "code", browser=False) == "code"
    with pytest.raises(LoginError, match="no device_authorization_endpoint"):
        choose_flow(_info(device=False), "device", browser=False)
    with pytest.raises(LoginError, match="unknown login flow"):
        choose_flow(_info(), "implicit", browser=True)


def test_browser_detection() -> None:
    assert can_open_browser(True, {"DISPLAY": ":0"})
    assert can_open_browser(True, {"BROWSER": "lynx"})
    assert can_open_browser(True, {}, browser_opener=lambda url: True)
    assert not can_open_browser(True, {})
    assert not can_open_browser(False, {"DISPLAY": ":0"}, browser_opener=lambda url: True)


# --- OAuth flows against the real development IdP ------------------------------------------


class FakeClock:
    """Virtual time for the device flow: records each requested sleep, really sleeps ``scale`` of it."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(seconds * self.scale)


async def _line(out: io.StringIO, predicate: Callable[[str], bool], task: asyncio.Task[object]) -> str:
    """The first line written to ``out`` that matches, waiting for it (or for the flow to fail)."""
    for _ in range(500):
        for line in out.getvalue().splitlines():
            if predicate(line):
                return line
        if task.done():
            task.result()  # raises the flow's error
            raise AssertionError(f"flow ended without printing the line; output: {out.getvalue()!r}")
        await asyncio.sleep(0.01)
    raise AssertionError(f"line never printed; output: {out.getvalue()!r}")


async def _with_idp(scenario: Callable[..., Awaitable[None]], **idp_options: Any) -> None:
    idp = DevIdentityProvider(**idp_options)
    issuer = await idp.start()
    try:
        async with aiohttp.ClientSession() as http:
            info = await discover_issuer(http, issuer, "bastion", ("openid", "groups"),
                                         idp_options.get("client_secret"))
            await scenario(idp, info, http)
    finally:
        await idp.stop()


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def _start_code_flow(info: IssuerInfo, **kwargs: Any) -> tuple[asyncio.Task[TokenResult], io.StringIO, str]:
    out = io.StringIO()
    task = asyncio.create_task(obtain_id_token(info, kwargs.pop("flow", "code"), out=out, **kwargs))
    url = await _line(out, lambda line: line.startswith(f"{info.authorization_endpoint}?"), task)
    assert url == url.strip() and " " not in url  # the URL line holds nothing else, for copy and paste
    return task, out, url


async def _decide_in_browser(http: aiohttp.ClientSession, url: str, action: str, **person: Any) -> str:
    """Do what a person does in the browser: open the IdP's page, press a button; return the redirect."""
    async with http.get(url) as page:
        assert page.status == 200 and "Approve as alice" in await page.text()
    form = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    data = aiohttp.FormData({**form, "action": action})
    for key, value in person.items():
        for item in value if isinstance(value, list) else [value]:
            data.add_field(key, item)
    async with http.post(url.split("?")[0], data=data, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        return resp.headers["Location"]


def test_code_flow_end_to_end() -> None:
    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, out, url = await _start_code_flow(info, open_browser=False)
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"] and query["scope"] == ["openid groups"]
        redirect_uri = query["redirect_uri"][0]
        assert urlsplit(redirect_uri).hostname == "127.0.0.1" and redirect_uri.endswith("/callback")
        location = await _decide_in_browser(http, url, "approve", username="alice", groups=["dev", "sre"])
        assert location.startswith(redirect_uri + "?")
        async with http.get(location) as page:
            assert page.status == 200 and "close this tab" in await page.text()
        result = await task
        claims = _claims(result.id_token)
        assert claims["preferred_username"] == "alice" and claims["groups"] == ["dev", "sre"]
        assert result.nonce == query["nonce"][0] == claims["nonce"]
        assert result.id_token not in out.getvalue() and "id_token" not in repr(result)
        with pytest.raises(aiohttp.ClientConnectionError):  # the loopback listener is gone
            async with http.get(location):
                pass
    asyncio.run(_with_idp(scenario))


def test_code_flow_uses_the_browser_opener_and_the_client_secret() -> None:
    opened: list[str] = []

    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, out, url = await _start_code_flow(info, flow="auto", environ={}, browser_opener=opened.append)
        await _line(out, lambda line: line.startswith("Could not open"), task)  # the opener returned None
        assert opened == [url]
        async with http.get(await _decide_in_browser(http, url, "approve", username="bob")) as page:
            assert page.status == 200
        assert _claims((await task).id_token)["preferred_username"] == "bob"
    asyncio.run(_with_idp(scenario, client_secret="native-app-secret"))


def test_code_flow_with_a_wrong_client_secret_is_refused() -> None:
    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        wrong = IssuerInfo(**{**info.__dict__, "client_secret": "wrong"})
        task, _, url = await _start_code_flow(wrong, open_browser=False)
        async with http.get(await _decide_in_browser(http, url, "approve", username="alice")):
            pass
        with pytest.raises(LoginError, match="refused to issue a token: invalid_client"):
            await task
    asyncio.run(_with_idp(scenario, client_secret="native-app-secret"))


def test_code_flow_refuses_a_redirect_with_the_wrong_state() -> None:
    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, _, url = await _start_code_flow(info, open_browser=False)
        location = await _decide_in_browser(http, url, "approve", username="alice")
        forged = location.replace("state=", "state=forged")
        async with http.get(forged) as page:
            assert page.status == 400 and "did not match" in await page.text()
        with pytest.raises(LoginError, match="wrong state"):
            await task
    asyncio.run(_with_idp(scenario))


def test_code_flow_access_denied() -> None:
    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, _, url = await _start_code_flow(info, open_browser=False)
        location = await _decide_in_browser(http, url, "deny")
        assert "error=access_denied" in location
        async with http.get(location) as page:
            assert page.status == 400
        with pytest.raises(LoginError, match="^the identity provider denied the login$"):
            await task
    asyncio.run(_with_idp(scenario))


def test_code_flow_times_out_when_no_browser_comes_back() -> None:
    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, _, _ = await _start_code_flow(info, open_browser=False, timeout=0.2)
        with pytest.raises(LoginError, match="no login arrived from the browser within 0.2 s"):
            await task
    asyncio.run(_with_idp(scenario))


async def _start_device_flow(info: IssuerInfo, **kwargs: Any) -> tuple[asyncio.Task[TokenResult], io.StringIO,
                                                                       str, str]:
    out = io.StringIO()
    task = asyncio.create_task(obtain_id_token(info, kwargs.pop("flow", "device"), out=out, **kwargs))
    code_line = await _line(out, lambda line: line.startswith("Code: "), task)
    lines = out.getvalue().splitlines()
    uri = lines[lines.index(code_line) - 1]  # the URL on its own line, just above the code
    assert uri == uri.strip() and uri.startswith(f"{info.issuer}/device?user_code=")
    return task, out, uri, code_line.removeprefix("Code: ")


def test_device_flow_end_to_end_through_the_approval_page() -> None:
    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        # open_browser=False and flow="auto": a headless login picks the device flow
        task, out, uri, user_code = await _start_device_flow(info, flow="auto", open_browser=False)
        assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", user_code)
        async with http.get(uri) as page:
            assert page.status == 200 and user_code in await page.text()
        await asyncio.sleep(0.15)  # let it poll a few times first
        form = aiohttp.FormData([("user_code", user_code), ("username", "carol"), ("groups", "dev"),
                                 ("groups", "sre"), ("action", "approve")])
        async with http.post(f"{info.issuer}/device", data=form) as resp:
            assert resp.status == 200
        result = await task
        claims = _claims(result.id_token)
        assert claims["preferred_username"] == "carol" and claims["groups"] == ["dev", "sre"]
        assert result.nonce is None and "nonce" not in claims
        assert re.search(r"Waiting for approval\.+\n$", out.getvalue())  # alive: a dot per poll
    asyncio.run(_with_idp(scenario, device_interval=0.03))


def test_device_flow_slow_down_adds_five_seconds_for_good() -> None:
    clock = FakeClock(scale=0.05)

    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, _, _, user_code = await _start_device_flow(info, clock=clock)
        async def fourth_poll_pending() -> None:
            while len(clock.sleeps) < 4:
                await asyncio.sleep(0.005)
        await asyncio.wait_for(fourth_poll_pending(), 5)
        idp.approve_device(user_code, "alice", ["dev"])
        assert _claims((await task).id_token)["preferred_username"] == "alice"
    # 0.1 s asked, 0.005 s really waited: the second poll is too fast and gets slow_down
    asyncio.run(_with_idp(scenario, device_interval=0.1))
    assert clock.sleeps == pytest.approx([0.1, 0.1, 5.1, 5.1])


def test_device_flow_access_denied() -> None:
    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, _, _, user_code = await _start_device_flow(info)
        async with http.post(f"{info.issuer}/device", data={"user_code": user_code, "action": "deny"}) as resp:
            assert resp.status == 200
        with pytest.raises(LoginError, match="^the identity provider denied the login$"):
            await task
    asyncio.run(_with_idp(scenario, device_interval=0.02))


def test_device_flow_expired_code_from_the_idp() -> None:
    frozen = FakeClock(scale=1.0)
    frozen.monotonic = lambda: 0.0  # type: ignore[method-assign]  # only the IdP's clock says "expired"

    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, _, _, _ = await _start_device_flow(info, clock=frozen)
        with pytest.raises(LoginError, match="the code expired; run bastion login again"):
            await task
    asyncio.run(_with_idp(scenario, device_interval=0.03, device_code_ttl=0.2))
    assert 3 <= len(frozen.sleeps) <= 10


def test_device_flow_gives_up_at_the_timeout() -> None:
    clock = FakeClock(scale=1.0)

    async def scenario(idp: DevIdentityProvider, info: IssuerInfo, http: aiohttp.ClientSession) -> None:
        task, _, _, _ = await _start_device_flow(info, clock=clock, timeout=0.25)
        with pytest.raises(LoginError, match="no approval arrived within 0.25 s"):
            await task
    asyncio.run(_with_idp(scenario, device_interval=0.06))
    assert clock.sleeps == pytest.approx([0.06] * 4)


def test_unreachable_idp_is_a_login_error() -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(LoginError, match="cannot reach the identity provider at http://127.0.0.1:9/"):
                await discover_issuer(http, "http://127.0.0.1:9", "bastion", ("openid",))
    asyncio.run(scenario())


# --- login() up to the bastion: the full exchange is in the e2e tests ------------------------


def test_login_refuses_plain_http_to_a_remote_bastion(tmp_path: Path) -> None:
    with pytest.raises(LoginError, match="refusing the bastion URL 'http://bastion.example'"):
        asyncio.run(login("http://bastion.example", environ={"HOME": str(tmp_path)}))
    assert not (tmp_path / ".ssh").exists()


def test_login_names_an_unreachable_bastion(tmp_path: Path) -> None:
    with pytest.raises(LoginError, match=r"cannot reach the bastion at http://127.0.0.1:9/v1/oidc"):
        asyncio.run(login("http://127.0.0.1:9/", environ={"HOME": str(tmp_path)}, out=io.StringIO()))
    # the key is made before the IdP round trip, so a key problem shows first
    assert stat.S_IMODE((tmp_path / ".ssh" / "id_ed25519").stat().st_mode) == 0o600


def test_login_with_agent_but_no_agent_fails_before_anything_else(tmp_path: Path) -> None:
    with pytest.raises(LoginError, match="SSH_AUTH_SOCK is not set"):
        asyncio.run(login("http://127.0.0.1:9", agent=True, environ={"HOME": str(tmp_path)}))
    assert not (tmp_path / ".ssh").exists()


def test_known_hosts_replaces_the_jump_target_list_when_it_changes(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIONE"
    own = f"@cert-authority [bastion.example]:2222 {key}"
    path = tmp_path / "known_hosts"
    path.write_text(f"{PLAIN}\n")
    assert update_known_hosts(path, f"{own}\n@cert-authority web-1,web-2 {key} bastion-jump-targets") == "added"
    # web-2 is no longer reachable: its name must not stay trusted under the bastion's host CA.
    assert update_known_hosts(path, f"{own}\n@cert-authority web-1 {key} bastion-jump-targets") == "replaced"
    assert path.read_text().splitlines() == [PLAIN, own, f"@cert-authority web-1 {key} bastion-jump-targets"]
    assert update_known_hosts(path, f"{own}\n@cert-authority !* {key} bastion-jump-targets") == "replaced"
    assert path.read_text().splitlines() == [PLAIN, own, f"@cert-authority !* {key} bastion-jump-targets"]
