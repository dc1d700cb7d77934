"""Value detectors for masking: where in a text a sensitive value sits.

Each detector turns a text into the spans ``(start, end)`` it would mask. A
regular expression finds candidates and, where a checksum or a range exists
(Luhn, IBAN mod 97, SSN areas, octets, the JWT header), a validator keeps only
the real ones: a random run of digits is not a card number.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Span = tuple[int, int]

BUILTIN_DETECTORS: tuple[str, ...] = ("email", "credit_card", "iban", "ssn", "phone", "ipv4", "jwt", "api_key")


class DetectorError(ValueError):
    """A custom detector that cannot be compiled."""


@dataclass(frozen=True)
class Detector:
    """A named finder of spans to mask, with a cheap regex that every text it can match contains."""

    name: str
    find: Callable[[str], list[Span]]
    hint: str = ""  # empty: no cheap test, always run find


# -- email ---------------------------------------------------------------------------------

EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w.%+\-]{1,64}"
    r"@(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w\-])"
)

# The same pattern over bytes. On ASCII input it matches exactly where the str pattern does (Unicode
# classes agree with ASCII ones on ASCII characters), without decoding every cell of a bulk result.
_EMAIL_ASCII = re.compile(EMAIL.pattern.encode("ascii"))


def is_email_bytes(value: bytes) -> bool:
    """True when a whole cell (UTF-8) is one email address, as ``EMAIL.fullmatch`` would say of its text."""
    if value.isascii():
        return _EMAIL_ASCII.fullmatch(value) is not None
    return EMAIL.fullmatch(value.decode("utf-8", "surrogateescape")) is not None


def find_email(text: str) -> list[Span]:
    """Addresses with a dotted domain and a letters-only top-level domain; letters may be non-ASCII."""
    if "@" not in text:
        return []
    return [m.span() for m in EMAIL.finditer(text)]


# -- card numbers --------------------------------------------------------------------------

_CARD = re.compile(r"(?<![0-9A-Za-z.])\d(?:[ \-]?\d){12,18}(?![0-9A-Za-z]|\.\d)")
_GROUP = re.compile(r"\d+")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(digits: str) -> bool:
    # Issuers' ranges start with 2-6 (Mastercard, Amex/Diners, Visa, Mastercard, Discover/UnionPay);
    # this also keeps 13-digit millisecond timestamps (1…) and zero runs (Luhn-valid) out.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and luhn_ok(digits)


def find_credit_card(text: str) -> list[Span]:
    """13-19 digits, optionally grouped by spaces or dashes, passing Luhn, from a card issuer's range."""
    if len(text) < 13:
        return []
    spans: list[Span] = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ \-]", "", m.group())
        if _card_ok(digits):
            spans.append(m.span())
            continue
        # A grouped run may hold a card next to other digits ("4111 1111 1111 1111 22"):
        # try whole groups from the left.
        groups = [g.span() for g in _GROUP.finditer(m.group())]
        found = _card_in_groups(m.group(), groups)
        if found:
            spans.append((m.start() + found[0], m.start() + found[1]))
    return spans


def _card_in_groups(candidate: str, groups: list[Span]) -> Span | None:
    for i in range(len(groups)):
        count = 0
        for j in range(i, len(groups)):
            count += groups[j][1] - groups[j][0]
            if count > 19:
                break
            if count >= 13 and _card_ok(re.sub(r"\D", "", candidate[groups[i][0]:groups[j][1]])):
                return groups[i][0], groups[j][1]
    return None


# -- IBAN ----------------------------------------------------------------------------------

IBAN_LENGTHS: Mapping[str, int] = dict(
    (code[:2], int(code[2:])) for code in (
        "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 "
        "DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 "
        "IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 "
        "MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 "
        "SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30"
    ).split()
)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}")


def iban_ok(compact: str) -> bool:
    """The ISO 13616 checksum: the rearranged number, letters as 10-35, is 1 modulo 97."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def find_iban(text: str) -> list[Span]:
    """IBANs of a registered country and length, with spaces or without, passing mod 97."""
    spans: list[Span] = []
    pos = 0
    while len(text) - pos >= 15:
        m = _IBAN.search(text, pos)
        if m is None:
            break
        pos = m.start() + 1
        candidate = m.group()
        length = IBAN_LENGTHS.get(candidate[:2].upper())
        if length is None:
            continue
        end, seen = 0, 0
        while seen < length and end < len(candidate):
            seen += candidate[end] != " "
            end += 1
        after = m.start() + end
        if seen < length or (after < len(text) and text[after].isalnum()):
            continue
        iban = candidate[:end]
        if not (iban.isupper() or iban.islower()):
            continue  # mixed case is a random token, not an IBAN
        if iban_ok(iban.replace(" ", "").upper()):
            spans.append((m.start(), after))
            pos = after
    return spans


# -- US social security numbers ------------------------------------------------------------

_SSN = re.compile(r"(?<![0-9A-Za-z\-])(\d{3})([\- ])(\d{2})\2(\d{4})(?![0-9A-Za-z]|-\d)")


def find_ssn(text: str) -> list[Span]:
    """AAA-GG-SSSS (dashes or spaces), outside the never-issued ranges: 000, 666, 9xx; 00; 0000."""
    if len(text) < 11:
        return []
    return [
        m.span() for m in _SSN.finditer(text)
        if m[1] not in ("000", "666") and m[1][0] != "9" and m[3] != "00" and m[4] != "0000"
    ]


# -- phone numbers -------------------------------------------------------------------------

_PHONE = re.compile(
    r"(?<![0-9A-Za-z+.\-/:])(?:"
    r"(?P<intl>\+[1-9]\d*+(?:[ .\-]?(?:\(\d{1,5}\)|\d++)){0,6}+)"      # +44 20 7946 0958
    r"|(?P<nanp>(?:1[ .\-])?(?:\(\d{3}\) ?|\d{3}[ .\-])\d{3}[ .\-]\d{4})"  # (415) 555-2671
    r"|(?P<trunk>0\d{1,4}+(?:[ \-]\d{2,4}+){2,5}+)"                        # 020 7946 0958
    r")(?![0-9A-Za-z]|[.\-/:]\d)"
)
_PHONE_DIGITS = {"intl": (8, 15), "nanp": (10, 11), "trunk": (9, 12)}


def find_phone(text: str) -> list[Span]:
    """E.164 numbers (+…) and national numbers written with separators; never bare integers."""
    if len(text) < 8:
        return []
    spans: list[Span] = []
    for m in _PHONE.finditer(text):
        kind = m.lastgroup or ""
        low, high = _PHONE_DIGITS[kind]
        if low <= sum(ch.isdigit() for ch in m.group()) <= high:
            spans.append(m.span())
    return spans


# -- IPv4 ----------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![0-9A-Za-z.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9A-Za-z]|\.\d)")


def find_ipv4(text: str) -> list[Span]:
    """Dotted quads with octets 0-255 and no leading zeros, not inside a longer dotted run."""
    if "." not in text:
        return []
    return [m.span() for m in _IPV4.finditer(text)]


# -- JWT -----------------------------------------------------------------------------------

_JWT = re.compile(r"(?<![A-Za-z0-9_\-])(eyJ[A-Za-z0-9_\-]{5,})\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def _jwt_header_ok(part: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error):  # not base64url, not UTF-8 or not JSON: not a JWT
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def find_jwt(text: str) -> list[Span]:
    """Three base64url parts whose first decodes to a JSON object naming an "alg"."""
    if "eyJ" not in text:
        return []
    return [m.span() for m in _JWT.finditer(text) if _jwt_header_ok(m[1])]


# -- API keys and secrets ------------------------------------------------------------------

_KEY_PREFIXED = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}"              # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"                   # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,255}"                 # GitHub fine-grained tokens
    r"|xox[baprs]-[A-Za-z0-9\-]{10,250}"                # Slack
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{10,247}"         # Stripe secret and restricted keys
    r"|AIza[0-9A-Za-z_\-]{35}"                          # Google API keys
    r")(?![A-Za-z0-9_\-])"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|.*\Z)",
    re.DOTALL,
)
_ASSIGNED = re.compile(
    r"(?i)(?P<key>password|passwd|passphrase|pwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key"
    r"|credential)s?[\"']?[ \t]*[=:][ \t]*[\"']?(?P<value>[^\s\"'<>]+)"
)
_BEARER = re.compile(r"(?i)\bbearer[ \t]+(?P<value>[A-Za-z0-9._~+/\-]{16,}=*)")
_URI_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]+:(?P<value>[^\s:/@]+)@")
_MARKER_LIKE = re.compile(r"\[REDACTED\]|hash:[0-9a-f]{16}|\*{4}.*")
_TEMPLATE_LIKE = ("${", "$(", "%(", "{{", "<")
_SECRET_KEY_PREFIXES = ("pass", "pwd")


def _char_classes(value: str) -> int:
    return sum((
        any(c.islower() for c in value), any(c.isupper() for c in value),
        any(c.isdigit() for c in value), any(not c.isalnum() for c in value),
    ))


def entropy(value: str) -> float:
    """Shannon entropy of the characters, in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in (value.count(ch) for ch in set(value))) if n else 0.0


def _secret_value_ok(key: str, value: str) -> bool:
    if _MARKER_LIKE.fullmatch(value) or value.startswith(_TEMPLATE_LIKE):
        return False  # already masked, or a placeholder such as ${DB_PASSWORD}
    if key.lower().startswith(_SECRET_KEY_PREFIXES):
        return len(value) >= 8 and _char_classes(value) >= 2
    return len(value) >= 16 and _char_classes(value) >= 2 and entropy(value) >= 3.0


def find_api_key(text: str) -> list[Span]:
    """Well-known token formats, private key blocks, URI passwords, and high-entropy values after a secret's name."""
    spans = [m.span() for m in _KEY_PREFIXED.finditer(text)]
    if "-----BEGIN" in text:
        spans += [m.span() for m in _PRIVATE_KEY.finditer(text)]
    if "=" in text or ":" in text:
        spans += [m.span("value") for m in _ASSIGNED.finditer(text) if _secret_value_ok(m["key"], m["value"])]
        if "://" in text:
            spans += [m.span("value") for m in _URI_PASSWORD.finditer(text) if not _MARKER_LIKE.fullmatch(m["value"])]
    spans += [m.span("value") for m in _BEARER.finditer(text) if _secret_value_ok("token", m["value"])]
    return spans


BUILTINS: Mapping[str, Detector] = {
    d.name: d for d in (
        Detector("email", find_email, "@"),
        Detector("credit_card", find_credit_card, r"\d"),
        Detector("iban", find_iban, r"\d"),
        Detector("ssn", find_ssn, r"\d"),
        Detector("phone", find_phone, r"\d"),
        Detector("ipv4", find_ipv4, r"\d"),
        Detector("jwt", find_jwt, r"\."),
        # Prefixed tokens hold "_" or "-", assignments "=" or ":"; AWS and Google keys start with A[KSBCI].
        Detector("api_key", find_api_key, r"[=:_\-]|A[KSBCI]|[Bb][Ee][Aa][Rr][Ee][Rr]"),
    )
}


def custom_detector(name: str, pattern: str) -> Detector:
    """A detector from a configured regex; a group named ``mask``, when present, is all that is masked."""
    if name in BUILTINS:
        raise DetectorError(f"custom detector {name!r}: the name is taken by a built-in detector")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise DetectorError(f"custom detector {name!r}: invalid regex: {e}") from e
    group = "mask" if "mask" in compiled.groupindex else 0

    def find(text: str) -> list[Span]:
        spans = []
        for m in compiled.finditer(text):
            start, end = m.span(group)
            if end > start:
                spans.append((start, end))
        return spans

    return Detector(name, find)
