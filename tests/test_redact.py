"""audit.redact: personal data and secrets masked with labelled placeholders; ordinary text left alone."""

from __future__ import annotations

import pytest

from audit.redact import luhn_valid, redact


@pytest.mark.parametrize("text, expected", [
    ("mail me at jane.doe+billing@example.co.uk please", "mail me at [email] please"),
    ("call +1 (415) 555-0132 now", "call [phone] now"),
    ("call 415-555-0132 now", "call [phone] now"),
    ("call (415) 555 0132", "call [phone]"),
    ("ring +44 20 7946 0958", "ring [phone]"),
    ("ring +4915112345678", "ring [phone]"),
    ("card 4242 4242 4242 4242 exp 12/27", "card [card] exp 12/27"),
    ("card 4111-1111-1111-1111", "card [card]"),
    ("card 378282246310005", "card [card]"),                     # Amex, 15 digits
    ("key sk-proj-AbCdEf0123456789XyZabc", "key [secret]"),
    ("key sk-ant-api03-abcDEF123456789-xyz_098765", "key [secret]"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "aws [secret] here"),
    ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a done", "token [secret] done"),
    ("slack xoxb-123456789012-abcdefghijkl", "slack [secret]"),
    ("Authorization: Bearer abc.DEF-123_456.ghi789", "Authorization: Bearer [secret]"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpM ok", "jwt [secret] ok"),
    ("api_key=Zx81kkQwe91 rest", "api_key=[secret] rest"),
    ('"password": "hunter22hunter"', '"password": "[secret]"'),
    ("hex 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "hex [secret]"),
    ("b64 QWxhZGRpbjpvcGVuIHNlc2FtZQ0KQWxhZGRpbjpvcGVuIHNlc2FtZQ0K", "b64 [secret]"),
])
def test_masks_each_kind_with_its_label(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "Order AC-4833699 shipped on 2025-06-30 at 14:05; total $1,234.56 for 3 items.",
    "Our support team is available Monday through Friday, 8 a.m. to 8 p.m. Eastern.",
    "Product ID: P-10059, version 1.2.3, SKU 12345678",
    "order number 1234567890123456",              # 16 digits that fail Luhn: an id, not a card
    "see https://acme.com/help/returns-and-refunds-policy-for-electronics",
    "The quick brown fox jumps over the lazy dog " * 3,
])
def test_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_everything_planted_in_one_message_is_masked():
    text = ("Hi, I'm jordan.lee42@gmail.com, phone +1 415 555 0199, card 5555 5555 5555 4444, "
            "and our key is sk-live-0123456789abcdefABCDEF.")
    masked = redact(text)
    for secret in ("jordan.lee42@gmail.com", "555 0199", "5555 5555 5555 4444", "sk-live-0123456789abcdefABCDEF"):
        assert secret not in masked
    assert masked.count("[email]") == masked.count("[phone]") == masked.count("[card]") == masked.count("[secret]") == 1


def test_luhn_and_empty_values():
    assert luhn_valid("4242424242424242") and not luhn_valid("4242424242424241")
    assert redact("") == "" and redact(None) is None
