"""What the tests send and check: requests to the app, and settings pointing at a test server."""

from __future__ import annotations

import dataclasses
import json
import socket
import urllib.error
import urllib.request

from herald_smtp.config import Settings
from herald_smtp.sending.fingerprint import fingerprint
from herald_smtp.sending.request import parse_send_request

from .net import LOCALHOST
from .smtp_server import SmtpTestServer

SMTP_USER = "herald-user"
SMTP_PASSWORD = "s3cret-smtp-pa55word"
API_KEY = "test-api-key-0123456789"


def send(client, body=None, headers=None):
    """POST /v1/send through a Flask test client."""
    # json.dumps escapes non-ASCII, so even a lone surrogate travels as valid JSON text.
    return client.post("/v1/send", data=json.dumps(body), content_type="application/json", headers=headers or {})


def post(url: str, payload: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    """POST /v1/send to a running service over HTTP: (status, body, headers)."""
    request = urllib.request.Request(
        url + "/v1/send", data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def assert_error(response, status: int, error_code: str, message_part: str = ""):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert body["ok"] is False
    assert body["error_code"] == error_code
    assert message_part in body["error_message"]
    return body


def fingerprint_of(payload: dict, secret: str = "") -> str:
    """The fingerprint the service computes for this body (with this IDEMPOTENCY_SECRET)."""
    return fingerprint(parse_send_request(json.dumps(payload).encode(), None), secret)


def smtp_env(server: SmtpTestServer) -> dict[str, str]:
    """Environment variables that point the service at `server`."""
    env = {
        "SMTP_HOST": server.host,
        "SMTP_PORT": str(server.port),
        "SMTP_FROM": "noreply@herald.test",
        "SMTP_FROM_NAME": "Herald Test",
        "SMTP_USE_STARTTLS": "true" if server.starttls else "false",
        "SMTP_USE_TLS": "true" if server.implicit_tls else "false",
        "SMTP_TIMEOUT_SECONDS": "5",
    }
    if server.starttls or server.implicit_tls:
        env["SMTP_TLS_CA_FILE"] = str(server.ca_file)
    if server.auth:
        env["SMTP_USER"], env["SMTP_PASSWORD"] = server.auth
    return env


def with_changes(settings: Settings, **changes) -> Settings:
    return dataclasses.replace(settings, **changes)


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Write raw bytes, read until the server closes: (status, headers, body) of the first answer."""
    with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except socket.timeout:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return int(lines[0].split()[1]), headers, body
