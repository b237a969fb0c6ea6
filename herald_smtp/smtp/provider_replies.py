"""The replies the big providers give for a setup problem, each with the operator's exact fix.

One table of (provider, where it comes, example, pattern, problem, fix), used
by classify.py (a 5xx whose text matches is the "5xx_setup" evidence, and the
send_failed message ends with the fix), by `herald-smtp doctor` (its line
names the same fix), by the OAuth token client (hint_for on a token endpoint's
error) and by docs/TROUBLESHOOTING.md, which shows markdown_table();
tests/test_provider_replies.py keeps the two identical.

Patterns match the reply's text as the client reports it (the code's lines
joined by a space, with or without the code in front), so they key on the
provider's own wording, never on a bare status code another server may use
for something else.
"""

from __future__ import annotations

import re
from typing import NamedTuple

SMTP_AUTH, SMTP_MAIL, SMTP_DATA, TOKEN = (
    "SMTP, to AUTH", "SMTP, to MAIL FROM, RCPT TO or the final dot", "SMTP, to MAIL FROM or the final dot",
    "token endpoint",
)

M365_OAUTH = ("switch to OAuth: SMTP_OAUTH_PROVIDER=microsoft with SMTP_OAUTH_TENANT, SMTP_OAUTH_CLIENT_ID and "
              "SMTP_OAUTH_CLIENT_SECRET of an Entra app registration that has the SMTP.SendAsApp application "
              "permission (Office 365 Exchange Online) with admin consent, its service principal registered in "
              "Exchange Online (New-ServicePrincipal) with access to the mailbox (Add-MailboxPermission)")


class ProviderReply(NamedTuple):
    provider: str
    where: str  # what answers it: an SMTP command's reply, or the OAuth token endpoint
    example: str  # the provider's real text
    pattern: re.Pattern[str]
    problem: str
    fix: str


def _row(provider: str, where: str, example: str, pattern: str, problem: str, fix: str) -> ProviderReply:
    return ProviderReply(provider, where, example, re.compile(pattern, re.IGNORECASE), problem, fix)


# First match wins: the more specific rows of a provider come first.
PROVIDER_REPLIES: tuple[ProviderReply, ...] = (
    _row("Microsoft 365", SMTP_AUTH,
         "550 5.7.30 Basic authentication is not supported for Client Submission",
         r"basic authentication is not supported for client submission",
         "Microsoft 365 no longer accepts a password (basic authentication) for SMTP AUTH",
         M365_OAUTH),
    _row("Microsoft 365", SMTP_AUTH,
         "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant",
         r"SmtpClientAuthentication is disabled for the (?:Tenant|Mailbox)",
         "authenticated SMTP (SMTP AUTH) is turned off for the tenant or the mailbox",
         "enable authenticated SMTP for the mailbox SMTP_USER: Exchange admin center > Recipients > Mailboxes > "
         "the mailbox > Manage email apps > Authenticated SMTP, or in Exchange Online PowerShell "
         "Set-CASMailbox -Identity MAILBOX -SmtpClientAuthenticationDisabled $false (the mailbox's setting "
         "overrides the tenant's)"),
    _row("Microsoft 365", SMTP_AUTH,
         "535 5.7.139 Authentication unsuccessful, the user credentials were incorrect",
         r"5\.7\.139 Authentication unsuccessful, the user credentials were incorrect",
         "Microsoft 365 refused the user name or password",
         "check SMTP_USER (the whole mailbox address) and SMTP_PASSWORD; an account with multi-factor "
         "authentication or security defaults cannot log in with its password: use OAuth "
         "(SMTP_OAUTH_PROVIDER=microsoft)"),
    _row("Microsoft 365", SMTP_AUTH,
         "535 5.7.3 Authentication unsuccessful",
         r"5\.7\.3 Authentication unsuccessful",
         "Microsoft 365 refused the login",
         "with OAuth (a token): the app's service principal is not registered in Exchange Online or has no "
         "permission on the mailbox: in Exchange Online PowerShell run New-ServicePrincipal -AppId CLIENT_ID "
         "-ObjectId OBJECT_ID (the enterprise application's object id), then Add-MailboxPermission -Identity "
         "MAILBOX -User OBJECT_ID -AccessRights FullAccess; with a password: the credentials are wrong, check "
         "SMTP_USER and SMTP_PASSWORD"),
    _row("Microsoft Entra ID", TOKEN,
         "invalid_client: AADSTS7000215: Invalid client secret provided.",
         r"\bAADSTS7000215\b",
         "Entra ID refused the client secret",
         "set SMTP_OAUTH_CLIENT_SECRET to the secret's Value (shown once, when it is created), not its Secret ID; "
         "create a new secret if the value is lost"),
    _row("Microsoft Entra ID", TOKEN,
         "invalid_client: AADSTS7000222: The provided client secret keys for app '...' are expired.",
         r"\bAADSTS7000222\b",
         "the client secret has expired",
         "create a new client secret in the app registration (Certificates & secrets) and set its Value as "
         "SMTP_OAUTH_CLIENT_SECRET"),
    _row("Microsoft Entra ID", TOKEN,
         "unauthorized_client: AADSTS700016: Application with identifier '...' was not found in the directory '...'.",
         r"\bAADSTS700016\b",
         "the application is not found in the tenant",
         "check SMTP_OAUTH_CLIENT_ID (the app registration's Application (client) ID) and SMTP_OAUTH_TENANT "
         "(the tenant it is registered in)"),
    _row("Microsoft Entra ID", TOKEN,
         "invalid_request: AADSTS90002: Tenant '...' not found.",
         r"\bAADSTS90002\b",
         "the tenant is not found",
         "check SMTP_OAUTH_TENANT: the Directory (tenant) ID or a domain of the tenant (contoso.onmicrosoft.com)"),
    _row("Gmail / Google Workspace", SMTP_AUTH,
         "534-5.7.9 Application-specific password required.",
         r"application-specific password required",
         "Google refuses the account password: 2-step verification is on",
         "create an app password (Google Account > Security > App passwords) and set it as SMTP_PASSWORD, "
         "or use OAuth (SMTP_OAUTH_PROVIDER=google)"),
    _row("Gmail / Google Workspace", SMTP_AUTH,
         "535-5.7.8 Username and Password not accepted.",
         r"username and password not accepted",
         "Google refused the login",
         "check SMTP_USER and SMTP_PASSWORD; with 2-step verification on, an app password is needed "
         "(Google Account > Security > App passwords), or use OAuth (SMTP_OAUTH_PROVIDER=google); with OAuth, "
         "the token was refused: SMTP_USER must be the account that granted it, with the scope "
         "https://mail.google.com/"),
    _row("OAuth 2.0 (Google and others)", TOKEN,
         "invalid_grant: Token has been expired or revoked.",
         r"\binvalid_grant\b|token has been expired or revoked",
         "the refresh token was revoked or has expired",
         "consent again with the account (a Google app in Testing status gets refresh tokens that expire "
         "after 7 days) and set the new refresh token as SMTP_OAUTH_REFRESH_TOKEN"),
    _row("Amazon SES", SMTP_AUTH,
         "535 Authentication Credentials Invalid",
         # SES's wording has no enhanced status code; "535 5.7.8 Authentication credentials invalid" is not SES.
         r"(?:^|\b535 )Authentication Credentials Invalid",
         "Amazon SES refused the SMTP credentials",
         "SES SMTP credentials are not the IAM access key and secret: create SMTP credentials in the SES console "
         "(SMTP settings > Create SMTP credentials) for the region of SMTP_HOST and set that SMTP user name and "
         "password as SMTP_USER and SMTP_PASSWORD"),
    _row("Amazon SES", SMTP_MAIL,
         "554 Message rejected: Email address is not verified. The following identities failed the check in "
         "region EU-WEST-1: noreply@example.com",
         r"email address is not verified",
         "Amazon SES has not verified an address of this mail (the sender, or in the sandbox the recipient)",
         "verify SMTP_FROM or its domain as an identity in the SES console, in the region of SMTP_HOST; while "
         "the account is in the SES sandbox, recipients must be verified too: request production access to "
         "leave the sandbox"),
    _row("SendGrid", SMTP_DATA,
         "550 The from address does not match a verified Sender Identity. Mail cannot be sent until this error "
         "is resolved.",
         r"does not match a verified Sender Identity",
         "SendGrid has not verified SMTP_FROM",
         "verify SMTP_FROM as a Single Sender, or authenticate its domain, in SendGrid (Settings > Sender "
         "Authentication)"),
)


def lookup(text: str) -> ProviderReply | None:
    """The row whose pattern the text matches (a reply, a failure's detail, a token error), or None."""
    return next((row for row in PROVIDER_REPLIES if row.pattern.search(text)), None)


def hint_for(text: str) -> str | None:
    """The hint "<problem> (fix: <fix>)" for a known provider reply, else None.

    For a token endpoint's error pass the error and its description together
    ("invalid_grant: Token has been expired or revoked."): the Entra ID codes
    are in the description, invalid_grant is the error itself.
    """
    row = lookup(text)
    return None if row is None else f"{row.problem} (fix: {row.fix})"


def markdown_table() -> str:
    """The table as docs/TROUBLESHOOTING.md shows it."""
    lines = ["| provider | answered by | the reply | problem | fix |", "|---|---|---|---|---|"]
    for row in PROVIDER_REPLIES:
        lines.append(f"| {row.provider} | {row.where} | `{row.example}` | {_cell(row.problem)} | {_cell(row.fix)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe would end the cell
