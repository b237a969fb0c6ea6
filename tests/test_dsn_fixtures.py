"""The DSN fixtures (tests/fixtures/dsn/, written by real MTAs) are what their README says: each a
multipart/report whose delivery-status names the action and status of its scenario, and whose envelope id,
where the MTA offered DSN, is the Message-ID of the returned mail."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "dsn"
# file: (Action, Status, ENVID sent, what came back)
EXPECTED = {
    "postfix-hard-bounce.eml": ("failed", "5.1.1", True, "text/rfc822-headers"),
    "postfix-hard-bounce-no-dsn.eml": ("failed", "5.1.1", False, "message/rfc822"),
    "postfix-delayed.eml": ("delayed", "4.2.0", True, "text/rfc822-headers"),
    "postfix-expired.eml": ("failed", "4.2.0", True, "text/rfc822-headers"),
    "exim-hard-bounce.eml": ("failed", "5.0.0", True, "text/rfc822-headers"),
    "exim-hard-bounce-no-dsn.eml": ("failed", "5.0.0", False, "message/rfc822"),
    "exim-delayed.eml": ("delayed", "4.0.0", True, "text/rfc822-headers"),
    "exim-expired.eml": ("failed", "5.0.0", True, "text/rfc822-headers"),
}


def test_every_fixture_is_listed():
    assert sorted(path.name for path in FIXTURES.glob("*.eml")) == sorted(EXPECTED)
    readme = (FIXTURES / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in EXPECTED)


def delivery_status(report: EmailMessage) -> list[dict[str, str]]:
    part = next(part for part in report.walk() if part.get_content_type() == "message/delivery-status")
    return [{key.lower(): str(value) for key, value in group.items()} for group in part.get_payload()]


def returned_message_id(report: EmailMessage, kind: str) -> str:
    part = next(part for part in report.walk() if part.get_content_type() == kind)
    if kind == "message/rfc822":
        return str(part.get_payload()[0]["Message-ID"])
    headers = BytesParser(policy=email.policy.default).parsebytes(part.get_payload(decode=True) or b"")
    return str(headers["Message-ID"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_fixture_is_the_report_of_its_scenario(name):
    action, status, with_envid, kind = EXPECTED[name]
    report = BytesParser(policy=email.policy.default).parsebytes((FIXTURES / name).read_bytes())
    assert report.get_content_type() == "multipart/report" and report.get_param("report-type") == "delivery-status"
    assert report["Return-Path"] == "<>"
    per_message, per_recipient = delivery_status(report)
    assert (per_recipient["action"], per_recipient["status"]) == (action, status)
    assert per_recipient["final-recipient"].replace(" ", "") == "rfc822;user@example.org"
    message_id = returned_message_id(report, kind)
    assert message_id.endswith("@example.com>")
    if with_envid:
        assert per_message["original-envelope-id"] == message_id.strip("<>")
    else:
        assert "original-envelope-id" not in per_message
