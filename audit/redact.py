"""Mask personal data and secrets in logged text before it is shown anywhere.

Reads and writes no table: a pure function over strings, applied to every
example text the report shows (prompts, answers, template names, verdict
reasons), on by default (``audit report --no-redact`` turns it off).

``redact(text)`` replaces, with labelled placeholders:

- ``[email]``  e-mail addresses;
- ``[card]``   card-like numbers: 13-19 digits, optionally grouped by spaces or
  dashes, that pass the Luhn check (order numbers that fail it are kept: they
  are what a reader needs to follow an example);
- ``[phone]``  phone numbers: an international ``+`` number, or 10-15 digits
  written the way people write phone numbers (groups separated by spaces,
  dots, dashes or parentheses). A bare run of digits without a ``+`` is not
  taken for a phone number: ids and amounts look the same;
- ``[secret]`` API keys and tokens: ``sk-...`` (OpenAI), ``sk-ant-...``
  (Anthropic), ``AKIA...``/``ASIA...`` (AWS), ``ghp_``/``gho_``/``ghs_``/
  ``github_pat_`` (GitHub), ``xox[abprs]-`` (Slack), ``AIza...`` (Google),
  ``Bearer <token>``, JWTs, ``key=value`` pairs whose key names a secret,
  and long opaque strings: 32+ hex digits, or 40+ base64 characters mixing
  upper case, lower case and digits.

The order matters: secrets first (a key can contain digit runs that look
like phone numbers), then e-mails, cards, phones. Masking is deliberately
eager: a false positive costs a readable id in an example, a false negative
leaks a customer's data into a document meant for a board room.
"""

from __future__ import annotations

import re

_SECRET_PATTERNS = [
    # Authorization headers: keep the scheme word, mask the credential.
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{12,}"), r"\1 [secret]"),
    # JSON Web Tokens: three base64url parts, the first two starting with '{"' encoded.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"), "[secret]"),
    # Vendor key prefixes (Anthropic's sk-ant- is covered by the sk- rule).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "[secret]"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "[secret]"),
    (re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"), "[secret]"),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), "[secret]"),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), "[secret]"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), "[secret]"),
    # key=value / "key": "value" where the key says it is a secret.
    (re.compile(r"(?i)\b((?:api[_-]?key|secret|password|passwd|access[_-]?token|auth[_-]?token|client[_-]?secret)"
                r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]{6,}"), r"\1[secret]"),
    # Long opaque strings. Hex: 32+ digits (md5 and longer).
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "[secret]"),
]

# Base64-ish runs of 40+ characters are secrets only when they mix character
# classes; a long word or a URL path of lower-case letters is not.
_OPAQUE = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{40,}={0,2}")

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")

# 13-19 digits, optionally in groups separated by one space or dash.
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])")

# A '+' number, or digit groups with phone-like separators. Counted digits decide.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,5}){1,4}(?![\w])"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_opaque(match: re.Match[str]) -> str:
    token = match.group(0)
    mixed = (re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"\d", token))
    return "[secret]" if mixed else token


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


def _mask_phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    # Dates (2025-06-30), times and amounts have fewer digits or no phone shape.
    if text.startswith("+"):
        return "[phone]" if 8 <= len(digits) <= 15 else text
    if not 10 <= len(digits) <= 15:
        return text
    # An ISO date followed by a time, or a version number, is not a phone.
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", text) or "." in text and re.fullmatch(r"[\d.]+", text) and text.count(".") >= 3:
        return text
    return "[phone]"


def redact(text: str | None) -> str | None:
    """``text`` with e-mails, phone numbers, card numbers and secrets replaced by labelled placeholders."""
    if not text:
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = _OPAQUE.sub(_mask_opaque, text)
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub(_mask_card, text)
    text = _PHONE.sub(_mask_phone, text)
    return text


__all__ = ["redact", "luhn_valid"]
