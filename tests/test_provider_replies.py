"""The replies operators actually get from Microsoft 365, Gmail, Amazon SES and SendGrid, each named with its fix.

Each reply is the provider's real text, answered by a real SMTP server on
loopback (tests/support/scripted_server.py) to the command the provider
answers it to. Every one is a setup problem: 500 send_failed, not retryable,
the key released (the same key sends once the fault is gone), not counted by
the circuit breaker, never a recipient problem; the send_failed message and
the doctor's line name the same fix (herald_smtp/smtp/provider_replies.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from herald_smtp.config import settings_from
from herald_smtp.outcomes import Outcome
from herald_smtp.smtp.classify import classify_failure, classify_reply
from herald_smtp.smtp.provider_replies import PROVIDER_REPLIES, hint_for, lookup, markdown_table
from herald_smtp.smtp.transport import SmtpFailure
from herald_smtp.tools.doctor import run_doctor
from tests.support.client import assert_error, send
from tests.support.scripted_server import ScriptedServer
from tests.test_failover import url_of

TROUBLESHOOTING = Path(__file__).resolve().parent.parent / "docs" / "TROUBLESHOOTING.md"

AUTH_OK = b"235 2.7.0 Authentication successful\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    verb: str  # the scripted server's key: "auth", "mail", "rcpt" or "dot" (the reply to the final dot)
    reply: bytes
    fix_says: tuple[str, ...]  # words of the fix that must reach the operator

    @property
    def auth(self) -> bool:
        return self.verb == "auth"


M365_BASIC_OFF = b"550 5.7.30 Basic authentication is not supported for Client Submission.\r\n"
SES_NOT_VERIFIED = (b"554 Message rejected: Email address is not verified. The following identities failed the check "
                    b"in region EU-WEST-1: noreply@herald.test\r\n")
SENDGRID_SENDER = (b"550 The from address does not match a verified Sender Identity. Mail cannot be sent until this "
                   b"error is resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ "
                   b"to see the Sender Identity requirements\r\n")

CASES = [
    Case("m365-basic-auth-not-supported", "auth", M365_BASIC_OFF,
         ("SMTP_OAUTH_PROVIDER=microsoft", "SMTP.SendAsApp", "admin consent")),
    Case("m365-smtp-auth-disabled-for-tenant", "auth",
         b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit "
         b"https://aka.ms/smtp_auth_disabled for more information. [AM0PR02CA0123.eurprd02.prod.outlook.com "
         b"2026-12-01T08:52:38.562Z 08DD1234567890AB]\r\n",
         ("Set-CASMailbox", "-SmtpClientAuthenticationDisabled $false", "Exchange admin center")),
    Case("m365-smtp-auth-disabled-for-mailbox", "auth",
         b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit "
         b"https://aka.ms/smtp_auth_disabled for more information. [AM0PR02CA0123.eurprd02.prod.outlook.com]\r\n",
         ("Set-CASMailbox", "-SmtpClientAuthenticationDisabled $false")),
    Case("m365-credentials-incorrect", "auth",
         b"535 5.7.139 Authentication unsuccessful, the user credentials were incorrect. "
         b"[AM0PR02CA0123.eurprd02.prod.outlook.com]\r\n",
         ("SMTP_PASSWORD", "OAuth")),
    Case("m365-5.7.3", "auth",
         b"535 5.7.3 Authentication unsuccessful [AM0PR02CA0123.eurprd02.prod.outlook.com]\r\n",
         ("New-ServicePrincipal", "Add-MailboxPermission", "SMTP_PASSWORD")),
    Case("gmail-application-specific-password", "auth",
         b"534-5.7.9 Application-specific password required. For more information, go to\r\n"
         b"534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor d9443c01a7336-21c-gsmtp\r\n",
         ("app password", "OAuth")),
    Case("gmail-username-and-password-not-accepted", "auth",
         b"535-5.7.8 Username and Password not accepted. For more information, go to\r\n"
         b"535 5.7.8  https://support.google.com/mail/?p=BadCredentials d9443c01a7336-21c-gsmtp\r\n",
         ("SMTP_PASSWORD", "app password", "OAuth")),
    Case("ses-credentials-invalid", "auth", b"535 Authentication Credentials Invalid\r\n",
         ("SMTP credentials", "not the IAM access key")),
    Case("ses-not-verified-at-mail-from", "mail", SES_NOT_VERIFIED, ("verify", "sandbox")),
    Case("ses-not-verified-at-rcpt", "rcpt", SES_NOT_VERIFIED, ("verify", "sandbox")),
    Case("ses-not-verified-after-the-final-dot", "dot", SES_NOT_VERIFIED, ("verify", "sandbox")),
    Case("sendgrid-sender-identity-at-mail-from", "mail", SENDGRID_SENDER, ("Sender Authentication", "SMTP_FROM")),
    Case("sendgrid-sender-identity-after-the-final-dot", "dot", SENDGRID_SENDER,
         ("Sender Authentication", "SMTP_FROM")),
]


def relay_env(server: ScriptedServer, case: Case, **extra: str) -> dict[str, str]:
    env = {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_FROM": "noreply@herald.test",
           "SMTP_USE_STARTTLS": "false", "SMTP_TIMEOUT_SECONDS": "5", **extra}
    if case.auth:
        env |= {"SMTP_USER": "herald@contoso.example", "SMTP_PASSWORD": "account-password"}
    return env


def scripted(case: Case) -> ScriptedServer:
    """A server that answers the case's reply once, then the command's usual success."""
    extensions = ("PIPELINING", "AUTH PLAIN LOGIN") if case.auth else ("PIPELINING",)
    then = [AUTH_OK] if case.auth else []
    return ScriptedServer(extensions=extensions, script={case.verb: [case.reply, *then]})


def mail_commands(server: ScriptedServer) -> int:
    return sum(1 for command in server.commands if command.upper().startswith(b"MAIL"))


def text_of(reply: bytes) -> str:
    """The reply as the client reports it: the code's lines joined, without the code."""
    return " ".join(line[4:].decode() for line in reply.splitlines())


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_provider_reply_is_a_setup_error_naming_the_fix_and_the_same_key_sends_after_the_fix(make_client, case):
    with scripted(case) as server:
        # Retries on and a circuit that opens at the first connection failure: a setup error uses neither.
        client = make_client(settings_from(relay_env(server, case, SMTP_RETRIES="2", SMTP_CIRCUIT_THRESHOLD="1")))
        payload = {"to": "someone@example.com", "idempotency_key": f"k-{case.name}"}

        body = assert_error(send(client, payload), 500, "send_failed", case.reply[:3].decode())
        assert body["retryable"] is False
        message = body["error_message"]
        for words in case.fix_says:
            assert words in message, (words, message)
        assert "(fix: " in message
        assert "check SMTP_USER and SMTP_PASSWORD, or the fallback URL's" not in message  # not the generic hint
        assert server.messages == []
        tries = mail_commands(server)
        assert tries == (0 if case.auth else 1), "a setup error is not retried in the request"

        # The fault is gone (the script answered it once): the same key is released, and really sends.
        again = send(client, payload)
        assert again.status_code == 200, again.get_data(as_text=True)
        assert "Idempotent-Replayed" not in again.headers
        assert len(server.messages) == 1


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_doctor_names_the_same_fix(case):
    entry = lookup(text_of(case.reply))
    assert entry is not None
    lines: list[str] = []
    with scripted(case) as server:
        to = "ops@example.com" if case.verb in ("rcpt", "dot") else None
        code = run_doctor(settings_from(relay_env(server, case, SMTP_TIMEOUT_SECONDS="2")), to, out=lines.append)
    assert code == 1
    [failed] = [line for line in lines if line.startswith("FAIL")]
    step = {"auth": "auth", "mail": "mail from", "rcpt": "rcpt", "dot": "test mail"}[case.verb]
    assert failed.startswith(f"FAIL {step}"), failed
    assert case.reply[:3].decode() in failed and entry.problem in failed
    assert failed.endswith(f"-> fix: {entry.fix}"), failed
    for words in case.fix_says:
        assert words in failed


PHASE_OF = {"auth": "auth", "mail": "mail", "rcpt": "rcpt", "dot": "after_data"}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_table_says_setup_released_no_breaker_for_each_reply(case):
    code, reply = int(case.reply[:3]), text_of(case.reply)
    if case.verb == "dot":
        result = classify_reply(code, reply, "<id@herald.test>")
        breaker = False
    else:
        verdict = classify_failure(SmtpFailure(PHASE_OF[case.verb], f"{code} {reply}", code, reply=reply))
        result, breaker = verdict.result, verdict.connection_failure
        assert verdict.retry is False
    assert result.outcome is Outcome.SMTP_SETUP, result
    assert not result.outcome.keep and not result.outcome.retryable
    assert breaker is False


def test_a_sender_identity_refusal_of_the_primary_moves_the_mail_to_the_fallback(make_client, server_factory):
    # Another relay has its own account and verified identities: a setup error fails over, as the other setup
    # rows do (before the final dot only).
    fallback = server_factory()
    with ScriptedServer(script={"mail": [SES_NOT_VERIFIED]}) as primary:
        env = relay_env(primary, CASES[0]) | {"SMTP_USER": "", "SMTP_PASSWORD": "",
                                              "SMTP_FALLBACK_URLS": url_of(fallback)}
        response = send(make_client(settings_from(env)), {"to": "a@example.com"})
        assert response.status_code == 200, response.get_data(as_text=True)
        assert primary.messages == []
    assert len(fallback.wait_for(1)) == 1


# --- the table itself, and the token endpoint's errors the OAuth client passes to hint_for

@pytest.mark.parametrize("row", PROVIDER_REPLIES, ids=lambda row: row.example[:40])
def test_each_row_matches_its_own_example(row):
    assert lookup(row.example) is row
    assert hint_for(row.example) == f"{row.problem} (fix: {row.fix})"


@pytest.mark.parametrize("text, says", [
    ("invalid_client: AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is "
     "the client secret value, not the client secret ID, for a secret added to app 'c0ffee00-1111-2222-3333-"
     "444455556666'. Trace ID: 0a1b Correlation ID: 2c3d Timestamp: 2026-12-01 08:52:38Z", ("Value", "Secret ID")),
    ("unauthorized_client: AADSTS700016: Application with identifier 'c0ffee00-1111-2222-3333-444455556666' was not "
     "found in the directory 'Contoso'. This can happen if the application has not been installed by the "
     "administrator of the tenant or consented to by any user in the tenant.",
     ("SMTP_OAUTH_CLIENT_ID", "SMTP_OAUTH_TENANT")),
    ("invalid_request: AADSTS90002: Tenant 'contoso.onmicrosoft.co' not found. Check to make sure you have the "
     "correct tenant ID and are signing into the correct cloud.", ("SMTP_OAUTH_TENANT",)),
    ("invalid_grant: Token has been expired or revoked.", ("SMTP_OAUTH_REFRESH_TOKEN", "consent again")),
    ("invalid_grant: Bad Request", ("SMTP_OAUTH_REFRESH_TOKEN",)),
], ids=["AADSTS7000215", "AADSTS700016", "AADSTS90002", "google-invalid-grant", "bare-invalid-grant"])
def test_hint_for_a_token_endpoint_error(text, says):
    hint = hint_for(text)
    assert hint is not None and "(fix: " in hint
    for words in says:
        assert words in hint, (words, hint)


def test_the_entra_code_wins_over_the_oauth_error():
    # Entra answers invalid_client for several AADSTS codes: the code names the fix.
    assert "Value" in (hint_for("invalid_client: AADSTS7000215: Invalid client secret provided.") or "")
    assert "expired" in (hint_for("invalid_client: AADSTS7000222: The provided client secret keys are expired.")
                         or "")


@pytest.mark.parametrize("text", [
    "5.7.8 Authentication credentials invalid",  # not SES's wording: no provider hint, no SES fix
    "535 5.7.8 Error: authentication failed: authentication failure",
    "5.1.1 <a@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
    "5.7.1 Message rejected as spam",
    "invalid_scope: the scope is not valid",
    "AADSTS70000215",  # another code that contains one of ours
])
def test_other_replies_get_no_provider_hint(text):
    assert lookup(text) is None and hint_for(text) is None


def test_a_recipient_refusal_stays_a_recipient_refusal():
    reply = "5.1.1 <a@example.com>: Recipient address rejected: User unknown"
    verdict = classify_failure(SmtpFailure("rcpt", f"550 {reply}", 550, reply=reply))
    assert verdict.result.outcome is Outcome.RECIPIENT_REJECTED
    assert classify_reply(554, "5.7.1 rejected as spam", "<id>").outcome is Outcome.SMTP_PERMANENT


def test_troubleshooting_shows_the_table_from_the_code():
    assert markdown_table() in TROUBLESHOOTING.read_text(encoding="utf-8")
