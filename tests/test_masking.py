"""Masking: detectors (positives and negatives), strategies, column globs, row masking, binary values."""

from __future__ import annotations

import base64
import json
import re
import struct
import uuid

import jwt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policies.detectors import BUILTINS, EMAIL, is_email_bytes, luhn_ok
from policies.masking import BUILTIN_DETECTORS, REDACTED, STRATEGIES, Column, ColumnPlan, Masker, MaskingError
from policies.model import MaskingRule
from policies.pgtypes import UNRESOLVED_COLUMN, UNRESOLVED_TABLE, mask_binary

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
HASH_RE = re.compile(r"hash:[0-9a-f]{16}")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Token shapes are assembled from parts so that no literal credential-looking string sits in the repository.
AWS_KEY = "AKIA" + "IOSFODNN7" + "EXAMPLE"
GITHUB_PAT = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z5A"
GITHUB_FINE = "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"
SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
STRIPE = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"
PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n-----END RSA PRIVATE KEY-----"
JWT_HS = jwt.encode({"sub": "alice", "iat": 1700000000}, "s" * 32, algorithm="HS256")
JWT_HS512 = jwt.encode({"sub": "bob", "admin": True}, "t" * 64, algorithm="HS512")
JWT_NONE = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(b'{"sub":"eve"}') + "."
JWT_RS_SHAPED = b64(b'{"alg":"RS256","kid":"k1"}') + "." + b64(b'{"iss":"https://idp"}') + "." + b64(b"\x01" * 256)


def findings(detector: str, text: str) -> list[str]:
    return [text[s:e] for s, e in BUILTINS[detector].find(text)]


POSITIVES: list[tuple[str, str, str | None]] = [
    # detector, text, the substring that must be found
    ("email", "contact alice@example.com today", "alice@example.com"),
    ("email", "a.b+tag@sub.example.co.uk", "a.b+tag@sub.example.co.uk"),
    ("email", "<bob_smith@mail.example.org>", "bob_smith@mail.example.org"),
    ("email", "x@y.io,", "x@y.io"),
    ("email", "first.last@company-name.com.", "first.last@company-name.com"),
    ("email", "mailto:Support@Example.COM", "Support@Example.COM"),
    ("email", '{"email": "carol@example.net"}', "carol@example.net"),
    ("email", "jürgen@bücher.de", "jürgen@bücher.de"),
    ("credit_card", "4111111111111111", "4111111111111111"),
    ("credit_card", "card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    ("credit_card", "5555-5555-5555-4444", "5555-5555-5555-4444"),
    ("credit_card", "amex 378282246310005", "378282246310005"),
    ("credit_card", "3782 822463 10005", "3782 822463 10005"),
    ("credit_card", "discover 6011111111111117;", "6011111111111117"),
    ("credit_card", "mc2 2223003122003222", "2223003122003222"),
    ("credit_card", "visa13 4222222222222", "4222222222222"),
    ("credit_card", "4111 1111 1111 1111 22", "4111 1111 1111 1111"),
    ("iban", "DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
    ("iban", "pay to GB82WEST12345698765432 now", "GB82WEST12345698765432"),
    ("iban", "FR14 2004 1010 0505 0001 3M02 606 EUR", "FR14 2004 1010 0505 0001 3M02 606"),
    ("iban", "NL91ABNA0417164300", "NL91ABNA0417164300"),
    ("iban", "be68539007547034", "be68539007547034"),
    ("iban", "CH9300762011623852957,", "CH9300762011623852957"),
    ("iban", "NO9386011117947", "NO9386011117947"),
    ("ssn", "ssn 123-45-6789", "123-45-6789"),
    ("ssn", "078-05-1120", "078-05-1120"),
    ("ssn", "219 09 9999", "219 09 9999"),
    ("ssn", "(536-90-4399)", "536-90-4399"),
    ("ssn", "001-01-0001", "001-01-0001"),
    ("ssn", "899-99-9999.", "899-99-9999"),
    ("phone", "call +1 415 555 2671", "+1 415 555 2671"),
    ("phone", "+14155552671", "+14155552671"),
    ("phone", "+44 20 7946 0958", "+44 20 7946 0958"),
    ("phone", "+33 1 23 45 67 89", "+33 1 23 45 67 89"),
    ("phone", "(415) 555-2671", "(415) 555-2671"),
    ("phone", "tel: 415-555-2671", "415-555-2671"),
    ("phone", "415.555.2671", "415.555.2671"),
    ("phone", "020 7946 0958", "020 7946 0958"),
    ("phone", "1-800-555-0199", "1-800-555-0199"),
    ("phone", "+1 (415) 555-2671", "+1 (415) 555-2671"),
    ("ipv4", "from 192.168.1.10", "192.168.1.10"),
    ("ipv4", "10.0.0.1", "10.0.0.1"),
    ("ipv4", "dns 8.8.8.8,", "8.8.8.8"),
    ("ipv4", "255.255.255.255", "255.255.255.255"),
    ("ipv4", "host 172.16.254.1:5432", "172.16.254.1"),
    ("ipv4", "version 1.2.3.4", "1.2.3.4"),  # a valid address: masked (documented false positive)
    ("ipv4", "net 10.0.0.0/8", "10.0.0.0"),
    ("jwt", JWT_HS, JWT_HS),
    ("jwt", f"Authorization: Bearer {JWT_HS512}", JWT_HS512),
    ("jwt", f"?id_token={JWT_HS}&state=x", JWT_HS),
    ("jwt", JWT_NONE, JWT_NONE),
    ("jwt", f'{{"token": "{JWT_RS_SHAPED}"}}', JWT_RS_SHAPED),
    ("jwt", f"{JWT_HS}.", JWT_HS),
    ("api_key", f"aws {AWS_KEY}", AWS_KEY),
    ("api_key", GITHUB_PAT, GITHUB_PAT),
    ("api_key", f"token {GITHUB_FINE}", GITHUB_FINE),
    ("api_key", SLACK, SLACK),
    ("api_key", f"STRIPE_KEY {STRIPE}", STRIPE),
    ("api_key", GOOGLE, GOOGLE),
    ("api_key", f"key: {PEM} end", PEM),
    ("api_key", "password=Hunter22x", "Hunter22x"),
    ("api_key", "login?user=bob&password=Tr0ub4dor&3", "Tr0ub4dor&3"),  # runs to a space or quote: masks more
    ("api_key", 'db_password: "c0rrect-Horse"', "c0rrect-Horse"),
    ("api_key", "secret=Zx9kq2LmP0vR7tYw3NbQ", "Zx9kq2LmP0vR7tYw3NbQ"),
    ("api_key", '{"access_token": "ya29.a0AfH6SMBx3Kq9LmP0vR7t"}', "ya29.a0AfH6SMBx3Kq9LmP0vR7t"),
    ("api_key", "postgresql://app:s3cr3tPw@db:5432/app", "s3cr3tPw"),
    ("api_key", "Authorization: Bearer 8f3Kq9LmP0vR7tYw3NbQzX", "8f3Kq9LmP0vR7tYw3NbQzX"),
    ("api_key", "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBg (cut short)", None),
]

NEGATIVES: list[tuple[str, str]] = [
    ("email", "user@localhost"),
    ("email", "@handle on twitter"),
    ("email", "a@b"),
    ("email", "foo@bar.c"),
    ("email", "spaces a @ b.com"),
    ("email", "user@@example.com"),
    ("email", "****@example.com"),
    ("credit_card", "4111111111111112"),         # Luhn fails
    ("credit_card", "4111 1111 1111 1112"),      # Luhn fails
    ("credit_card", "1234567812345678"),          # Luhn fails
    ("credit_card", "0000000000000000"),          # Luhn passes, not an issuer range
    ("credit_card", "1700000000003"),             # a millisecond timestamp
    ("credit_card", "411111111111"),              # 12 digits
    ("credit_card", "41111111111111111111111"),   # a longer run of digits
    ("credit_card", "ORD4111111111111111"),       # part of a word
    ("credit_card", "pi 3.4111111111111111"),     # a decimal fraction
    ("iban", "DE89 3704 0044 0532 0130 01"),      # checksum fails
    ("iban", "GB82WEST12345698765431"),           # checksum fails
    ("iban", "XX89370400440532013000"),           # no such country
    ("iban", "DE8937040044053201300"),            # one character short
    ("iban", "DE89370400440532013000X"),          # runs on
    ("iban", "De89370400440532013000"),           # mixed case: a token, not an IBAN
    ("ssn", "000-12-3456"),
    ("ssn", "666-12-3456"),
    ("ssn", "900-12-3456"),
    ("ssn", "123-00-4567"),
    ("ssn", "123-45-0000"),
    ("ssn", "123456789"),
    ("ssn", "123-45-67890"),
    ("ssn", "1234-56-7890"),
    ("ssn", "123-45 6789"),
    ("phone", "4155552671"),                      # a bare integer
    ("phone", "2024-01-15"),
    ("phone", "15.01.2024"),
    ("phone", "01/15/2024"),
    ("phone", "01-02-2024"),
    ("phone", "2024-01-15 12:30:45"),
    ("phone", "192.168.1.10"),
    ("phone", "+12"),
    ("phone", "123-45-6789"),
    ("phone", "1.2.3.4"),
    ("phone", "pi is 3.14159265358"),
    ("ipv4", "256.1.1.1"),
    ("ipv4", "1.2.3"),
    ("ipv4", "1.2.3.4.5"),
    ("ipv4", "v1.2.3.4"),
    ("ipv4", "01.02.03.04"),
    ("ipv4", "192.168.1.1000"),
    ("ipv4", "2024.01.15"),
    ("jwt", b64(b'{"typ":"JWT"}') + "." + b64(b'{"sub":"x"}') + ".sig"),    # no alg
    ("jwt", "eyJub3QganNvbg.eyJzdWIiOiJ4In0.sig"),                             # header is not JSON
    ("jwt", JWT_HS.rsplit(".", 1)[0]),                                        # two parts
    ("jwt", JWT_HS.split(".", 1)[0]),                                         # one part
    ("jwt", "a.b.c"),
    ("jwt", "eyJ!!.x.y"),
    ("api_key", "password=required"),
    ("api_key", "password=${DB_PASSWORD}"),
    ("api_key", "token=abc"),
    ("api_key", "AKIA1234"),
    ("api_key", "sk_" + "live_short"),
    ("api_key", "the secret: is safe"),
    ("api_key", "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----"),
    ("api_key", "token=aaaaaaaaaaaaaaaaaaaaaaaa"),
    ("api_key", "ghp_short"),
    ("api_key", "api_key=[REDACTED]"),
    ("api_key", "token_type=bearer expires_in=3600"),
]


@pytest.mark.parametrize(("detector", "text", "expected"), POSITIVES)
def test_detector_positives(detector: str, text: str, expected: str | None) -> None:
    found = findings(detector, text)
    if expected is None:  # a private key cut short is masked to the end of the text
        assert found and text.endswith(found[-1])
    else:
        assert expected in found


@pytest.mark.parametrize(("detector", "text"), NEGATIVES)
def test_detector_negatives(detector: str, text: str) -> None:
    assert findings(detector, text) == []


@pytest.mark.parametrize("detector", BUILTIN_DETECTORS)
def test_every_detector_has_six_cases_each_way(detector: str) -> None:
    assert sum(d == detector for d, _, _ in POSITIVES) >= 6
    assert sum(d == detector for d, _ in NEGATIVES) >= 6


def test_card_test_data_is_what_it_claims() -> None:
    for number in ("4111111111111111", "5555555555554444", "378282246310005", "4222222222222"):
        assert luhn_ok(number)
    for number in ("4111111111111112", "1234567812345678"):
        assert not luhn_ok(number)


def masker(*rules: MaskingRule, key: bytes = KEY, custom: dict[str, str] | None = None) -> Masker:
    return Masker(rules, hash_key=key, custom_detectors=custom or {})


NOTES = [Column(None, "notes")]


def one(m: Masker, value: str) -> str:
    return m.mask_text(m.plan(NOTES), 0, value)[0]


# -- strategies ------------------------------------------------------------------------------------------------

def test_redact_replaces_the_detected_substring_with_the_marker() -> None:
    m = masker(MaskingRule("redact", detect=("email", "credit_card")))
    assert one(m, "mail bob@example.com, card 4111 1111 1111 1111.") == f"mail {REDACTED}, card {REDACTED}."


def test_partial_keeps_the_last_four_and_an_emails_domain() -> None:
    m = masker(MaskingRule("partial", detect=("credit_card", "ssn", "email", "phone", "iban")))
    assert one(m, "4111 1111 1111 1111") == "****1111"
    assert one(m, "ssn 123-45-6789") == "ssn ****6789"
    assert one(m, "bob@example.com") == "****@example.com"
    assert one(m, "+1 (415) 555-2671") == "****2671"
    assert one(m, "DE89 3704 0044 0532 0130 00") == "****3000"


def test_partial_redacts_short_values_fully() -> None:
    m = masker(MaskingRule("partial", columns=("*.pin",)))
    plan = m.plan([Column("users", "pin")])
    assert m.mask_text(plan, 0, "1234") == (REDACTED, True)
    assert m.mask_text(plan, 0, "") == (REDACTED, True)
    assert m.mask_text(plan, 0, "12345") == ("****2345", True)


def test_hash_is_stable_keyed_and_hides_the_input() -> None:
    rule = MaskingRule("hash", detect=("email",))
    first, again = one(masker(rule), "bob@example.com"), one(masker(rule), "bob@example.com")
    other = one(masker(rule, key=OTHER_KEY), "bob@example.com")
    assert HASH_RE.fullmatch(first) and first == again and first != other
    assert "bob" not in first and "example" not in first
    assert one(masker(rule), "carol@example.com") != first


def test_hash_correlates_a_column_value_with_the_same_value_found_elsewhere() -> None:
    m = masker(MaskingRule("hash", columns=("users.email",)), MaskingRule("hash", detect=("email",)))
    plan = m.plan([Column("users", "email"), Column("tickets", "body")])
    whole, _ = m.mask_text(plan, 0, "bob@example.com")
    inside, _ = m.mask_text(plan, 1, "from bob@example.com")
    assert inside == f"from {whole}"


def test_hash_needs_a_real_key() -> None:
    with pytest.raises(MaskingError, match="16 bytes"):
        masker(MaskingRule("hash", columns=("*.email",)), key=b"short")
    masker(MaskingRule("redact", columns=("*.email",)), key=b"")  # no hash rule, no key needed


@pytest.mark.parametrize(("rule", "message"), [
    (MaskingRule("scramble", columns=("*.x",)), "strategy 'scramble'"),
    (MaskingRule("redact"), "neither columns nor detectors"),
    (MaskingRule("redact", detect=("passport",), name="p.masking[0]"), "p.masking\\[0\\]: unknown detector 'passport'"),
    (MaskingRule("redact", columns=('users."ssn',)), "unbalanced double quote"),
    (MaskingRule("redact", columns=("a.b.c.d",)), "more than schema.table.column"),
])
def test_bad_rules_are_refused(rule: MaskingRule, message: str) -> None:
    with pytest.raises(MaskingError, match=message):
        masker(rule)


def test_custom_detectors() -> None:
    m = masker(MaskingRule("redact", detect=("employee_id", "zip")),
               custom={"employee_id": r"EMP-\d{6}", "zip": r"zip=(?P<mask>\d{5})"})
    assert one(m, "EMP-123456 lives at zip=90210") == f"{REDACTED} lives at zip={REDACTED}"
    with pytest.raises(MaskingError, match="invalid regex"):
        masker(MaskingRule("redact", detect=("bad",)), custom={"bad": "("})
    with pytest.raises(MaskingError, match="taken by a built-in"):
        masker(MaskingRule("redact", detect=("email",)), custom={"email": "x"})


# -- column globs and how rules combine -------------------------------------------------------------------------

@pytest.mark.parametrize(("glob", "column", "matches"), [
    ("*.email", Column("public.users", "email"), True),
    ("*.email", Column("users", "email"), True),
    ("*.email", Column(None, "email"), True),
    ("*.email", Column("users", "EMAIL"), True),         # unquoted: case-insensitive
    ("*.email", Column("users", "email2"), False),
    ("users.ssn", Column("users", "ssn"), True),
    ("users.ssn", Column("public.users", "ssn"), True),
    ("Users.SSN", Column("users", "ssn"), True),
    ("users.ssn", Column("orders", "ssn"), False),
    ("users.ssn", Column(None, "ssn"), False),           # no table (an expression): only "*" table parts match
    ("users.ssn", Column(UNRESOLVED_TABLE, "ssn"), True),  # a table not looked up may be users: mask
    ("public.users.ssn", Column(UNRESOLVED_TABLE, "ssn"), True),
    ("customers.*", Column(UNRESOLVED_TABLE, "x"), True),
    ("users.ssn", Column(UNRESOLVED_TABLE, "name"), False),
    ("public.users.ssn", Column("public.users", "ssn"), True),
    ("public.users.ssn", Column("users", "ssn"), False),
    ("public.users.ssn", Column("audit.users", "ssn"), False),
    ('users."SSN"', Column("users", "SSN"), True),       # quoted: exact
    ('users."SSN"', Column("users", "ssn"), False),
    ("email", Column("anything", "email"), True),        # a bare name: any table
    ("email", Column(None, "email"), True),
    ("cust*.card_*", Column("customers", "card_number"), True),
    ("*.*.email", Column(None, "email"), True),
    ("customers.*", Column(None, "x"), False),
    ("customers.*", Column("public.customers", "x"), True),
    ("user[sz].ssn", Column("userz", "ssn"), True),
    ("user[!s].ssn", Column("users", "ssn"), False),
    ("user?.ssn", Column("users", "ssn"), True),
])
def test_column_globs(glob: str, column: Column, matches: bool) -> None:
    plan = masker(MaskingRule("redact", columns=(glob,))).plan([column])
    assert (plan.strategy(0) == "redact") is matches


def test_a_column_rule_wins_over_detectors() -> None:
    m = masker(MaskingRule("hash", columns=("*.notes",)), MaskingRule("redact", detect=("email",)))
    plan = m.plan([Column("t", "notes"), Column("t", "other")])
    assert plan.strategy(0) == "hash" and plan.detectors(0) == ()
    assert plan.strategy(1) is None and plan.detectors(1) == ("email",)
    assert HASH_RE.fullmatch(m.mask_text(plan, 0, "a@b.com and more")[0])


def test_the_stricter_strategy_wins_when_rules_overlap() -> None:
    m = masker(MaskingRule("partial", columns=("*.ssn",)), MaskingRule("redact", columns=("users.*",)),
               MaskingRule("partial", detect=("email",)), MaskingRule("hash", detect=("email",)))
    plan = m.plan([Column("users", "ssn"), Column("orders", "ssn"), Column("orders", "note")])
    assert [plan.strategy(i) for i in range(3)] == ["redact", "partial", None]
    assert HASH_RE.fullmatch(m.mask_text(plan, 2, "a@b.com")[0])


def test_detectors_scoped_to_columns() -> None:
    m = masker(MaskingRule("redact", columns=("tickets.body",), detect=("email",)))
    plan = m.plan([Column("tickets", "body"), Column("tickets", "title")])
    assert plan.masked_columns == (0,)
    assert m.mask_text(plan, 0, "from a@b.com") == (f"from {REDACTED}", True)
    assert m.mask_text(plan, 1, "from a@b.com") == ("from a@b.com", False)
    assert m.mask_free_text("echo a@b.com") == f"echo {REDACTED}"  # free text has no columns: every detector runs


def test_no_rules_means_inactive_and_empty_plans() -> None:
    m = masker()
    assert not m.active
    plan = m.plan([Column("users", "email")])
    assert plan.empty and plan.masked_columns == ()
    row: list[bytes | None] = [b"a@b.com"]
    assert m.mask_row_text(plan, row) == (row, 0)
    assert m.mask_free_text("a@b.com") == "a@b.com"
    assert masker(MaskingRule("redact", detect=("email",))).active


def test_plans_are_reused_for_the_same_shape() -> None:
    m = masker(MaskingRule("redact", columns=("*.email",)))
    cols = [Column("users", "id"), Column("users", "email")]
    assert m.plan(cols) is m.plan(list(cols))
    assert isinstance(m.plan(cols), ColumnPlan)


# -- rows ------------------------------------------------------------------------------------------------------

class Untouchable(bytes):
    """A cell that fails the test if anyone decodes or searches it."""

    def decode(self, *args: object, **kwargs: object) -> str:
        raise AssertionError("a column the plan leaves alone was decoded")


def test_mask_row_text_touches_only_planned_columns() -> None:
    m = masker(MaskingRule("partial", columns=("users.ssn",)), MaskingRule("redact", columns=("users.email",)))
    plan = m.plan([Column("users", "id"), Column("users", "email"), Column("users", "ssn"), Column("users", "bio")])
    row: list[bytes | None] = [Untouchable(b"42"), b"bob@example.com", b"123-45-6789", Untouchable(b"a@b.com \xff")]
    masked, count = m.mask_row_text(plan, row)
    assert masked == [b"42", REDACTED.encode(), b"****6789", b"a@b.com \xff"] and count == 2
    assert masked[0] is row[0] and masked[3] is row[3]
    assert row[1] == b"bob@example.com"  # the caller's list is not modified


def test_mask_row_text_handles_null_and_returns_the_same_list_when_nothing_changes() -> None:
    m = masker(MaskingRule("redact", columns=("*.email",)), MaskingRule("redact", detect=("credit_card",)))
    plan = m.plan([Column("u", "email"), Column("u", "note")])
    row: list[bytes | None] = [None, b"nothing to see"]
    masked, count = m.mask_row_text(plan, row)
    assert masked is row and count == 0
    masked, count = m.mask_row_text(plan, [None, b"4111111111111111"])
    assert masked == [None, REDACTED.encode()] and count == 1
    assert m.mask_row_text(plan, [b"x"]) == ([REDACTED.encode()], 1)  # a short row does not raise


def test_invalid_utf8_outside_the_finding_survives_byte_for_byte() -> None:
    m = masker(MaskingRule("redact", detect=("email",)))
    plan = m.plan([Column(None, "raw")])
    masked, _ = m.mask_row_text(plan, [b"\xff\xfe a@b.com \xc3"])
    assert masked == [b"\xff\xfe " + REDACTED.encode() + b" \xc3"]


def test_json_values_stay_json() -> None:
    m = masker(MaskingRule("redact", detect=("credit_card", "email", "api_key")),
               MaskingRule("partial", columns=("*.profile",)))
    plan = m.plan([Column("t", "doc"), Column("t", "profile")])
    doc = '{"id": 7, "card": 4111111111111111, "mail": "a@b.com", "password": "Hunter22x"}'
    masked, changed = m.mask_text(plan, 0, doc)
    assert changed and json.loads(masked) == {"id": 7, "card": REDACTED, "mail": REDACTED, "password": REDACTED}
    cut = json.dumps({"key": "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQ"})
    assert json.loads(m.mask_text(plan, 0, cut)[0]) == REDACTED
    assert json.loads(m.mask_text(plan, 1, '{"name": "Bob Jones"}')[0]) == "****ones"


def test_free_text_masks_values_echoed_by_errors() -> None:
    m = masker(MaskingRule("redact", columns=("users.ssn",)), MaskingRule("redact", detect=("email",)))
    message = ("duplicate key value violates unique constraint\nDETAIL:  Key (ssn)=(123456789) already exists.\n"
               "DETAIL:  Key (id)=(5) already exists.\n"
               "DETAIL:  Failing row contains (5, 123456789, null).\nHINT: mail bob@example.com")
    masked = m.mask_free_text(message)
    assert "123456789" not in masked and "bob@example.com" not in masked
    assert f"Key (ssn)=({REDACTED})" in masked and "Key (id)=(5)" in masked
    assert f"Failing row contains ({REDACTED})" in masked
    assert f"Key (lower(ssn::text))=({REDACTED})" in m.mask_free_text("Key (lower(ssn::text))=(x1) exists")


# -- binary format ---------------------------------------------------------------------------------------------

def numeric(groups: list[int], weight: int, negative: bool = False) -> bytes:
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, 0x4000 if negative else 0, 0, *groups)


def array(element_oid: int, items: list[bytes | None]) -> bytes:
    out = [struct.pack("!iiIii", 1, int(any(i is None for i in items)), element_oid, len(items), 1)]
    out += [struct.pack("!i", -1) if i is None else struct.pack("!i", len(i)) + i for i in items]
    return b"".join(out)


def elements(value: bytes) -> list[bytes | None]:
    ndim, _flags, _oid = struct.unpack_from("!iiI", value)
    (count,) = struct.unpack_from("!i", value, 12)
    pos, out = 12 + 8 * ndim, []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", value, pos)
        pos += 4
        out.append(None if size == -1 else value[pos:pos + size])
        pos += max(size, 0)
    return out


@pytest.fixture
def binary() -> tuple[Masker, ColumnPlan]:
    m = masker(MaskingRule("partial", columns=("*.email",)), MaskingRule("redact", columns=("*.secret_id",)),
               MaskingRule("redact", detect=("credit_card", "ipv4", "email")))
    return m, m.plan([Column("u", "email"), Column("u", "secret_id"), Column("u", "note")])


@pytest.mark.parametrize("oid", [25, 1043, 1042, 19])
def test_binary_text_types_are_masked_and_stay_utf8(binary: tuple[Masker, ColumnPlan], oid: int) -> None:
    m, plan = binary
    assert mask_binary(oid, b"bob@example.com", m, plan, 0) == b"****@example.com"
    masked = mask_binary(oid, "né 4111111111111111 ✓".encode(), m, plan, 2)
    assert masked is not None and masked.decode("utf-8") == f"né {REDACTED} ✓"
    unchanged = b"nothing here"
    assert mask_binary(oid, unchanged, m, plan, 2) is unchanged


def test_binary_json_and_jsonb_stay_valid(binary: tuple[Masker, ColumnPlan]) -> None:
    m, plan = binary
    doc = b'{"card": 4111111111111111, "ok": true}'
    assert json.loads(mask_binary(114, doc, m, plan, 2) or b"") == {"card": REDACTED, "ok": True}
    masked = mask_binary(3802, b"\x01" + doc, m, plan, 2)
    assert masked is not None and masked[:1] == b"\x01" and json.loads(masked[1:])["card"] == REDACTED
    assert json.loads((mask_binary(3802, b"\x01123", m, plan, 1) or b"")[1:]) == REDACTED  # a scalar, whole
    assert mask_binary(3802, b"\x02{}", m, plan, 2) is None  # an unknown jsonb version


@pytest.mark.parametrize(("oid", "value"), [
    (23, struct.pack("!i", 42)),
    (20, struct.pack("!q", 4111111111111111)),
    (1700, numeric([12], 0)),
    (2950, uuid.uuid4().bytes),
    (17, b"\x00\x01"),
    (1082, struct.pack("!i", 9000)),
    (869, bytes([2, 32, 0, 4, 10, 0, 0, 1])),
    (16, b"\x01"),
])
def test_binary_other_types_under_a_column_rule_become_null(binary: tuple[Masker, ColumnPlan], oid: int,
                                                            value: bytes) -> None:
    m, plan = binary
    assert mask_binary(oid, value, m, plan, 1) is None


@pytest.mark.parametrize(("oid", "value", "found"), [
    (20, struct.pack("!q", 4111111111111111), True),
    (20, struct.pack("!q", 4111111111111112), False),
    (1700, numeric([4111, 1111, 1111, 1111], 3), True),
    (1700, numeric([4111, 1111, 1111, 1112], 3, negative=True), False),
    (869, bytes([2, 32, 0, 4, 10, 0, 0, 1]), True),
    (650, bytes([2, 8, 1, 4, 10, 0, 0, 0]), True),
    (869, bytes([3, 128, 0, 16]) + b"\x20\x01" + b"\x00" * 13 + b"\x01", False),
    (23, struct.pack("!i", 42), False),
    (701, struct.pack("!d", 4111111111111111.0), False),  # reads as 4111111111111111.0 (PostgreSQL: 4.1e+15)
    (2950, uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, False),
    (1114, struct.pack("!q", 0), False),
    (1186, struct.pack("!qii", 3_600_000_000, 2, 1), False),
])
def test_binary_other_types_under_detectors_pass_or_become_null(binary: tuple[Masker, ColumnPlan], oid: int,
                                                                value: bytes, found: bool) -> None:
    m, plan = binary
    masked = mask_binary(oid, value, m, plan, 2)
    assert masked is None if found else masked is value


def test_binary_arrays_are_masked_element_by_element(binary: tuple[Masker, ColumnPlan]) -> None:
    m, plan = binary
    texts = array(25, [b"a@b.com", None, b"plain"])
    assert elements(mask_binary(1009, texts, m, plan, 2) or b"") == [REDACTED.encode(), None, b"plain"]
    numbers = array(20, [struct.pack("!q", 7), struct.pack("!q", 4111111111111111)])
    masked = mask_binary(1016, numbers, m, plan, 2)
    assert masked is not None and elements(masked) == [struct.pack("!q", 7), None]
    assert struct.unpack_from("!i", masked, 4)[0] == 1  # the has-nulls flag
    assert mask_binary(1016, array(20, [struct.pack("!q", 7)]), m, plan, 2) is not None
    assert mask_binary(1009, texts, m, plan, 0) is None  # a column rule over an array


def test_binary_unknown_types_fail_closed_unless_declared_text(binary: tuple[Masker, ColumnPlan]) -> None:
    m, plan = binary
    citext = 16_385
    assert mask_binary(citext, b"hello", m, plan, 2) is None
    assert mask_binary(citext, b"hello a@b.com", m, plan, 2, text_oids={citext}) == b"hello " + REDACTED.encode()
    value = b"\x00\x01"
    columns_only = masker(MaskingRule("redact", columns=("*.email",)))
    assert mask_binary(citext, value, columns_only, columns_only.plan([Column("u", "id")]), 0) is value


@pytest.mark.parametrize(("oid", "value"), [
    (20, b"\x00\x01\x02"), (1700, b"\x00"), (869, b"\x02\x20"), (1009, b"\x00\x00"), (2950, b"short"),
    (1016, array(20, [b"\x00"])[:-1]), (16, b"\x07"),
])
def test_binary_malformed_values_become_null(binary: tuple[Masker, ColumnPlan], oid: int, value: bytes) -> None:
    m, plan = binary
    assert mask_binary(oid, value, m, plan, 2) is None


# -- properties ------------------------------------------------------------------------------------------------

SECRETS = [(d, expected) for d, _, expected in POSITIVES if expected is not None]
ALL_DETECTORS = {strategy: masker(MaskingRule(strategy, detect=BUILTIN_DETECTORS))
                 for strategy in ("redact", "partial", "hash")}


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(sorted(ALL_DETECTORS)))
def test_masking_arbitrary_text_never_raises(text: str, strategy: str) -> None:
    m = ALL_DETECTORS[strategy]
    masked, _ = m.mask_text(m.plan(NOTES), 0, text)
    assert isinstance(masked, str) and isinstance(m.mask_free_text(text), str)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary()), max_size=4), st.sampled_from([20, 23, 25, 114, 869, 1009, 1700,
                                                                                 3802, 1016, 2950, 77777]))
def test_masking_arbitrary_bytes_never_raises(row: list[bytes | None], oid: int) -> None:
    m = masker(MaskingRule("redact", detect=BUILTIN_DETECTORS), MaskingRule("hash", columns=("*.h",)))
    plan = m.plan([Column("t", "a"), Column("t", "h"), Column("t", "b"), Column("t", "c")])
    masked, count = m.mask_row_text(plan, row)
    assert len(masked) == len(row) and 0 <= count <= len(row)
    for index, value in enumerate(row):
        if value is not None:
            result = mask_binary(oid, value, m, plan, index)
            assert result is None or isinstance(result, bytes)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SECRETS), st.text(max_size=40), st.text(max_size=40), st.sampled_from(["redact", "hash"]))
def test_a_detected_secret_never_survives_redact_or_hash(secret: tuple[str, str], before: str, after: str,
                                                         strategy: str) -> None:
    _, value = secret
    text = f"{before} | {POSITIVES_TEXT[value]} | {after}"
    assume(value not in before and value not in after)
    m = ALL_DETECTORS[strategy]
    once = m.mask_text(m.plan(NOTES), 0, text)[0]
    twice = m.mask_text(m.plan(NOTES), 0, once)[0]
    assert value not in once and value not in twice
    assert value not in m.mask_free_text(text)


POSITIVES_TEXT = {expected: text for _, text, expected in POSITIVES if expected is not None}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SECRETS), st.text(max_size=40), st.text(max_size=40), st.sampled_from(["redact", "partial"]))
def test_masking_a_masked_value_again_reveals_nothing_more(secret: tuple[str, str], before: str, after: str,
                                                           strategy: str) -> None:
    text = f"{before} | {POSITIVES_TEXT[secret[1]]} | {after}"
    m = ALL_DETECTORS[strategy]
    once = m.mask_text(m.plan(NOTES), 0, text)[0]
    assert m.mask_text(m.plan(NOTES), 0, once)[0] == once


# At least five letters or digits, one of them outside hex (a hash's output could hold a short hex run).
CELLS = st.tuples(st.text(max_size=20), st.text("ghijklmnopqrstuvwxyzGHIJ0123456789", min_size=5, max_size=20),
                  st.text(max_size=20)).map("".join).filter(lambda v: any(c not in "0123456789abcdef" for c in v))


@settings(max_examples=200, deadline=None)
@given(CELLS, st.sampled_from(["redact", "partial", "hash"]))
def test_a_column_rule_never_shows_the_value(value: str, strategy: str) -> None:
    m = masker(MaskingRule(strategy, columns=("*.secret",)))
    plan = m.plan([Column("t", "secret")])
    masked, changed = m.mask_text(plan, 0, value)
    assert changed and value not in masked
    again, _ = m.mask_text(plan, 0, masked)
    if strategy == "redact":
        assert again == masked


_EMAILISH = st.text(alphabet="abcXYZ019._%+-@ ", max_size=30) | st.from_regex(
    r"[a-z0-9._%+\-]{1,12}@([a-z0-9\-]{1,8}\.){1,3}[a-z]{2,5}", fullmatch=True)


@settings(max_examples=800)
@given(_EMAILISH)
def test_the_bytes_email_check_agrees_with_the_detector_on_ascii(text: str) -> None:
    # The bulk path checks text cells as bytes when they are ASCII; it must say what the str detector says.
    assert is_email_bytes(text.encode()) == (EMAIL.fullmatch(text) is not None)


@settings(max_examples=300)
@given(st.lists(st.none() | _EMAILISH | st.text(max_size=12), min_size=1, max_size=5), st.sampled_from(STRATEGIES))
def test_masking_cell_by_cell_gives_what_masking_the_row_gives(values: list[str | None], strategy: str) -> None:
    masker = Masker([MaskingRule(strategy=strategy, columns=("*.c0", "*.c2")), MaskingRule(detect=("email",))],
                    hash_key=b"k" * 32)
    plan = masker.plan([Column("t", f"c{i}") for i in range(len(values))])
    row = [None if v is None else v.encode() for v in values]
    whole, _ = masker.mask_row_text(plan, row)
    cells = list(row)
    for index, mask in plan.text_cells:
        value = cells[index]
        if value is not None:
            cells[index] = mask(value)
    assert cells == whole


def test_a_renamed_column_matches_the_rules_of_its_own_name_and_of_its_new_one() -> None:
    masker = Masker([MaskingRule("redact", columns=("customers.ssn",)), MaskingRule("partial", columns=("*.email",))],
                    hash_key=b"k" * 32)
    plan = masker.plan([Column("public.customers", "x", "ssn"), Column("public.customers", "email", "name"),
                        Column("public.customers", "name"), Column(None, "ssn", None)])
    assert [plan.strategy(i) for i in range(4)] == ["redact", "partial", None, None]


def test_a_column_the_catalog_could_not_name_takes_every_rule() -> None:
    masker = Masker([MaskingRule("partial", columns=("*.email",)), MaskingRule("hash", columns=("orders.total",))],
                    hash_key=b"k" * 32)
    plan = masker.plan([Column(UNRESOLVED_TABLE, "x", UNRESOLVED_COLUMN)])
    assert plan.strategy(0) == "hash"  # the stricter of the two
