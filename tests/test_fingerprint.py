"""The idempotency fingerprint covers every field of SendRequest but the key and the timeout.

Built from dataclasses.fields(SendRequest), so a field added later is covered
without anyone touching these tests: two requests that differ in it must not
replay each other.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from herald_smtp.addresses import Mailbox
from herald_smtp.sending.fingerprint import NOT_FINGERPRINTED, fingerprint
from herald_smtp.sending.request import SendRequest, parse_send_request

SECRET = "replica-shared-secret"
EXCLUDED = {"idempotency_key", "timeout_seconds"}

# Every field set, the optional ones included; a field added later keeps its default here.
BASE = SendRequest(to=Mailbox("alice", "example.com"), subject="Verification code", body="Your code is 482913",
                   params={"code": "482913"}, template="otp", locale="en", idempotency_key="ch_1",
                   timeout_seconds=10.0)


def other_value(name: str, value):
    """A value of the same kind that means another mail."""
    if isinstance(value, Mailbox):
        return Mailbox("bob", value.domain)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, dict):
        return {**value, "other": "other"}
    if isinstance(value, (list, tuple)):
        return type(value)([*value, "other"])
    pytest.fail(f"SendRequest.{name}: no other value known for {value!r}; extend other_value() for its type")


def fields_named(names) -> list[str]:
    return [f.name for f in dataclasses.fields(SendRequest) if f.name in names]


FINGERPRINTED = [f.name for f in dataclasses.fields(SendRequest) if f.name not in EXCLUDED]


def test_the_exclusions_are_exactly_the_key_and_the_timeout():
    assert set(NOT_FINGERPRINTED) == EXCLUDED
    assert set(fields_named(EXCLUDED)) == EXCLUDED  # both still fields of SendRequest


@pytest.mark.parametrize("secret", ["", SECRET], ids=["plain", "keyed"])
@pytest.mark.parametrize("name", FINGERPRINTED)
def test_two_requests_differing_only_in_a_field_get_different_fingerprints(name, secret):
    changed = dataclasses.replace(BASE, **{name: other_value(name, getattr(BASE, name))})
    assert fingerprint(changed, secret) != fingerprint(BASE, secret), name


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_two_requests_differing_only_in_the_key_or_the_timeout_get_the_same_one(name):
    for value in (None, other_value(name, getattr(BASE, name))):
        changed = dataclasses.replace(BASE, **{name: value})
        assert fingerprint(changed) == fingerprint(BASE)
        assert fingerprint(changed, SECRET) == fingerprint(BASE, SECRET)


def test_the_fingerprint_of_todays_requests_is_unchanged():
    # Computed before the fingerprint was derived from the fields: a replay in flight at deploy time still matches.
    payload = {"to": "li@例子.中国", "subject": "您的验证码", "body": "您的验证码是 482913。",
               "params": {"code": "482913", "b": "2"}, "template": "otp", "locale": "zh-CN",
               "idempotency_key": "k1", "timeout_seconds": 7}
    request = parse_send_request(json.dumps(payload).encode(), None)
    assert fingerprint(request) == "63aae4945a113ef5654e939aab6aec9ca6f69306ab73cbb2a3c872d4b7cbcc01"
    assert fingerprint(request, "replica-secret") == "4cdc605884bad720629f09bd557b89d6ccd848a660033c5ebe0b9dde03e695f4"
