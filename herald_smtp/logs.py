"""Logging: JSON lines on stdout for the app and for gunicorn, and the startup lines.

Every line carries time, level, logger, message, `service` and, inside a
request, `request_id`; while tracing is on and a span is active, also
`trace_id` and `span_id` (W3C hex), so logs and traces join. The same dictConfig serves gunicorn (`logconfig_dict`)
and the other entry points, so all output has one shape. `time` is RFC 3339
in UTC with milliseconds (2026-12-01T08:52:38.562Z), so the lines sort and
join with other systems' logs. The JSON line is python-json-logger's, written
by JsonLineFormatter with less work per line (a log line is a share of every
request's CPU), and records skip the caller and thread lookups no line shows.

Exception texts on the request path are request data: gunicorn's
InvalidChunkSize quotes the bad line (which can be the JSON body), a decode
error quotes the bytes it choked on. Lines there carry the exception's class
and a fixed description; an unexpected error's traceback is logged by
traceback_without_messages(), frames and classes only. gunicorn's own
`Invalid request from ip=...: <error>` line (a body the app never read, parsed
by gunicorn to skip it on a kept-alive connection) is cut by
GunicornRequestTextFilter to the error's leading words, and the same filter
masks the address in the path of gunicorn's access line for
`/v1/suppressions/{address}` (`/v1/suppressions/j***@example.com`).
"""

from __future__ import annotations

import functools
import logging
import logging.config
import re
import traceback
from collections.abc import Mapping, MutableMapping
from urllib.parse import unquote

from gunicorn import glogging
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder

from . import tracing
from .addresses import aligned, mask_email
from .config import SERVICE_NAME, Settings
from .timing import DEADLINE_SLACK_SECONDS, HERALD_CLIENT_TIMEOUT_SECONDS, rfc3339, worst_case_answer_seconds

log = logging.getLogger("herald_smtp")

ACCESS_LOGGER = "gunicorn.access"
# gunicorn's line for a request its parser refused (workers/base.py handle_error), pre-formatted: the error's
# text follows the ip, e.g. `Invalid chunk size: b'<the line>'`. No space inside an ip, IPv6 included.
_GUNICORN_INVALID_REQUEST = re.compile(r"(Invalid request from ip=\S*?): (.*)", re.DOTALL)
# Where a parser's message starts quoting what it was given: `: b'...'`, `'...'`, `(... '...')`, `[...]`.
_QUOTING = re.compile(r"""[:'"(\[]""")
# A recipient in a path (GET/DELETE /v1/suppressions/{address}), in clear or percent-encoded, up to the query.
_ADDRESS_IN_PATH = re.compile(r"(/v1/suppressions/)([^\s?#]+)")
# The access-log atoms that carry the path: the request line and the path alone.
_PATH_ATOMS = ("r", "U")
# The gunicorn access-log atom of the X-Request-ID response header that web/app.py sets.
_ACCESS_REQUEST_ID_ATOM = "{x-request-id}o"
# A field of a %-style format, as python-json-logger finds them.
_FMT_FIELD = re.compile(r"%\((.+?)\)")
# The atoms AccessLogger builds: those of serve.ACCESS_LOG_FORMAT, the path atoms and the request id.
_LEAN_ATOMS = frozenset({"h", "r", "s", "b", "M", *_PATH_ATOMS, _ACCESS_REQUEST_ID_ATOM})


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, with the same `time` as the JSON lines, and a `traceback` field below the line."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # A JSON line carries every field; this format shows only the message, so the traceback is added here.
        traceback_text = getattr(record, "traceback", None)
        return f"{line}\n{traceback_text.rstrip()}" if isinstance(traceback_text, str) else line


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line; `time` in RFC 3339.

    The line python-json-logger's JsonFormatter writes for the same `fmt` and `rename_fields`, key for key and
    value for value (its reserved attributes, its encoder for values JSON has no type for), with less work per
    line: the fields of `fmt` are found once, the record's fields are gathered in one pass, and one encoder
    serves every line (tests/test_logs.py compares the two).
    """

    def __init__(self, fmt: str, rename_fields: Mapping[str, str] | None = None, timestamp: bool = False) -> None:
        if timestamp:
            raise ValueError("JsonLineFormatter writes `time` from fmt's asctime; timestamp=True is not supported")
        super().__init__(fmt)
        renames = dict(rename_fields or {})
        fields = _FMT_FIELD.findall(fmt)
        self._uses_asctime = "asctime" in fields
        self._named = [(field, renames.get(field, field)) for field in fields]
        self._renames = renames
        self._skipped = frozenset(RESERVED_ATTRS) | frozenset(fields)
        self._encoder = JsonEncoder(ensure_ascii=True)  # stateless between calls: one for every thread

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)

    def format(self, record: logging.LogRecord) -> str:
        attributes = record.__dict__
        given: dict = {}
        if isinstance(record.msg, dict):  # a dict logged as the message: its items are fields
            given = dict(record.msg)
            record.message = ""
        else:
            record.message = record.getMessage()
        if self._uses_asctime:
            record.asctime = rfc3339(record.created)
        if record.exc_info and not given.get("exc_info"):
            given["exc_info"] = self.formatException(record.exc_info)
        if not given.get("exc_info") and record.exc_text:
            given["exc_info"] = record.exc_text
        if record.stack_info and not given.get("stack_info"):
            given["stack_info"] = self.formatStack(record.stack_info)
        renames, skipped = self._renames, self._skipped
        line = {key: attributes.get(field) for field, key in self._named}
        for key, value in given.items():
            line[renames.get(key, key)] = value
        for key, value in attributes.items():  # the extras: the renamed names are reserved, so never among them
            if key not in skipped and not key.startswith("_"):
                line[key] = value
        return self._encoder.encode(line)


class ContextFilter(logging.Filter):
    """Adds `service`, the current request id and, while a span is active, its trace and span id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = SERVICE_NAME
        if not hasattr(record, "request_id"):
            record.request_id = _access_request_id(record) or _current_request_id()
        ids = tracing.log_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


def leading_words(message: str) -> str:
    """A parser's message up to its first colon, quote or bracket: what went wrong, without what it quotes.

    `Invalid chunk size: b'{"to": ...}'` -> `Invalid chunk size`; `The part after the @-sign is invalid
    (Codepoint U+2014 at position 3 of 'ex—ample')` -> `The part after the @-sign is invalid`.
    """
    return _QUOTING.split(message, maxsplit=1)[0].strip().rstrip(".").strip()


class GunicornRequestTextFilter(logging.Filter):
    """Cuts the request's bytes out of gunicorn's `Invalid request from ip=...` line, and masks a path's address.

    gunicorn logs str() of its parser's exception, which quotes what it refused: a bad chunk-size line can
    be a whole JSON body, recipient and code included. The line keeps the ip and the error's leading words
    (`Invalid chunk size`, `Invalid HTTP Header`), up to the first colon, quote or bracket.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ACCESS_LOGGER and isinstance(record.args, MutableMapping):
            _mask_path_addresses(record.args)
            return True
        if record.name != "gunicorn.error" or not isinstance(record.msg, str):
            return True
        match = _GUNICORN_INVALID_REQUEST.match(record.getMessage())
        if match:
            what = leading_words(match.group(2)) or "malformed request"
            record.msg, record.args = f"{match.group(1)}: {what} (the rest is not logged: it quotes the request)", ()
        return True


class AccessLogger(glogging.Logger):
    """gunicorn's logger, building only the access-line atoms our format and filters read.

    gunicorn's atoms() makes every atom for every request: the time in Apache's format, one per request header,
    response header and environ variable, which the access line does not show. When the access format names only
    the atoms of _LEAN_ATOMS, this builds those (the path atoms and the request id header with them, for the
    filters above), with gunicorn's values; any other format gets gunicorn's full set (tests/test_logs.py compares).
    """

    def atoms(self, resp, req, environ, request_time):  # gunicorn-stubs type the dict as its own full set
        if not _lean_enough(self.cfg.access_log_format):
            return super().atoms(resp, req, environ, request_time)
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        atoms = {
            "h": environ.get("REMOTE_ADDR", "-"),
            "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            "s": status,
            "b": str(sent) if sent is not None else "-",
            "M": request_time.seconds * 1000 + int(request_time.microseconds / 1000),
            "U": environ.get("PATH_INFO"),
        }
        headers = resp.headers.items() if hasattr(resp.headers, "items") else resp.headers
        for name, value in headers:
            if name.lower() == "x-request-id":  # the last one wins, as in gunicorn's dict
                atoms[_ACCESS_REQUEST_ID_ATOM] = value
        return atoms


@functools.lru_cache(maxsize=8)
def _lean_enough(access_log_format: str) -> bool:
    """Does the format read only _LEAN_ATOMS? Decided once per format, not per request."""
    return _LEAN_ATOMS.issuperset(_FMT_FIELD.findall(access_log_format))


def _mask_path_addresses(atoms: MutableMapping) -> None:
    # The request line is request data too: a recipient in the path would be logged in clear.
    for name in _PATH_ATOMS:
        value = atoms.get(name)
        if isinstance(value, str) and "/v1/suppressions/" in value:
            atoms[name] = _ADDRESS_IN_PATH.sub(lambda m: m[1] + mask_email(unquote(m[2])), value)


def _access_request_id(record: logging.LogRecord) -> str | None:
    # gunicorn logs the access line after the response, outside the Flask request context;
    # the id is in the line's atoms, as the X-Request-ID header the app answered with.
    if record.name != ACCESS_LOGGER or not isinstance(record.args, Mapping):
        return None
    try:
        # Indexing, not .get(): gunicorn's atoms look response headers up in __getitem__,
        # and give "-" for a header that is missing.
        value = record.args[_ACCESS_REQUEST_ID_ATOM]
    except KeyError:
        return None
    return value if isinstance(value, str) and value not in ("", "-") else None


def _current_request_id() -> str | None:
    # Imported lazily: logging must work outside Flask (gunicorn master, CLI).
    from flask import g, has_request_context

    if has_request_context():
        return g.get("request_id")
    return None


def traceback_without_messages(exc: BaseException) -> str:
    """The traceback of `exc` and of the exceptions chained to it, with every exception's message left out.

    For a bug on the request path: its frames (file, line, function, source line) are what a fix needs,
    while its message may quote the request (`UnicodeDecodeError: ... in position 12`, a KeyError naming
    a value, a parser quoting the body), and with it a recipient or a one-time code.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts = []
    for position, link in enumerate(reversed(chain)):  # oldest first, as Python prints a chain
        if position:
            parts.append("\nThe exception above led to the one below:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        name = f"{type(link).__module__}.{type(link).__qualname__}"
        parts.append(f"{name} (message not logged: it may hold request data)\n")
    return "".join(parts)


def logging_dict(settings: Settings) -> dict:
    """A logging.config.dictConfig dict for the app and gunicorn's loggers."""
    if settings.log_format == "json":
        formatter = {
            "()": JsonLineFormatter,
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "timestamp": False,
        }
    else:
        formatter = {"()": TextFormatter,
                     "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}, "request_text": {"()": GunicornRequestTextFilter}},
        "formatters": {"main": formatter},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "main",
                "filters": ["context", "request_text"],
            }
        },
        "root": {"level": settings.log_level, "handlers": ["stdout"]},
        "loggers": {
            # gunicorn's loggers propagate to root instead of keeping their own handlers.
            "gunicorn.error": {"level": settings.log_level, "handlers": [], "propagate": True},
            ACCESS_LOGGER: {"level": "INFO", "handlers": [], "propagate": True},
            # aiosmtpd (the dev sink) narrates every SMTP command at INFO.
            "mail.log": {"level": "WARNING"},
            # imapclient logs the IMAP conversation at DEBUG (the bounce mails' headers with it), and flufl.bounce
            # each detector it runs at INFO and a detector's crash on an odd mail with its traceback (the recorder
            # answers that mail `Unrecognised` with the exception's class).
            "imapclient": {"level": "WARNING"},
            "flufl.bounce": {"level": "CRITICAL"},
        },
    }


def configure_logging(settings: Settings) -> None:
    logging.config.dictConfig(logging_dict(settings))
    lean_records()


def lean_records() -> None:
    """Records without what no line of ours shows: the caller's file, line and function (a walk up the stack for
    every record), and the thread's, process's and multiprocessing process's names and ids. These are the switches
    the logging HOWTO's "Optimization" section names; gunicorn's workers fork from the process that set them."""
    logging._srcfile = None  # the documented switch: no sys._getframe() per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_startup(settings: Settings) -> None:
    """The one-line effective configuration, then the warnings an operator must see."""
    log.info("starting herald-smtp", extra={"config": settings.redacted()})
    if not settings.api_keys:
        log.warning("API_KEY is empty: /v1/send needs no key; anyone who can reach the port can send mail")
    if not settings.smtp_configured:
        log.warning("SMTP not configured; /v1/send will return 503")
    if not settings.smtp_tls_verify:
        log.warning("SMTP_TLS_VERIFY=false: the SMTP server's certificate is not checked; "
                    "anyone on the path can read the mail and the SMTP password")
    if not settings.redis_tls_verify:
        log.warning("REDIS_TLS_VERIFY=false: the Redis server's certificate is not checked; "
                    "anyone on the path can read and forge the idempotency records and the Redis password. "
                    "For tests only: set REDIS_TLS_CA_FILE instead")
    if settings.smtp_user and not (settings.smtp_use_tls or settings.smtp_use_starttls):
        log.warning("SMTP_USER is set but TLS is off: the SMTP password travels in clear text; "
                    "set SMTP_USE_STARTTLS=true (port 587) or SMTP_USE_TLS=true (port 465)")
    for relay in settings.relays[1:]:
        if relay.tls == "plain":
            log.warning(f"SMTP_FALLBACK_URLS: {relay.name} is smtp+plain: mail to it travels unencrypted; "
                        "use it only for a relay on a private network")
        elif not relay.tls_verify:
            log.warning(f"SMTP_FALLBACK_URLS: {relay.name} has tls_verify=false: its certificate is not checked")
    _warn_unaligned_dkim(settings)
    if worst_case_answer_seconds(settings) > HERALD_CLIENT_TIMEOUT_SECONDS:
        log.warning(
            f"SMTP_TIMEOUT_SECONDS + IDEMPOTENCY_WAIT_SECONDS (+{DEADLINE_SLACK_SECONDS:g}s) is "
            f"{worst_case_answer_seconds(settings):g}s: longer than Herald's {HERALD_CLIENT_TIMEOUT_SECONDS:g}s "
            "client timeout, so Herald may report an error for a mail that was sent; lower them")
    if settings.store_is_shared and not settings.idempotency_secret:
        recipients = (" and the per-recipient rate limit keys are plain SHA-256 hashes of the addresses"
                      if settings.rate_limit_per_recipient else "")
        log.warning("IDEMPOTENCY_SECRET is empty: payload fingerprints in the store are plain SHA-256 hashes; "
                    "whoever can read Redis and knows a recipient could recover a one-time code from them"
                    f"{recipients}. Set it, the same on every replica")
    if not settings.store_is_shared:
        counted = ("; the rate limits count per replica" if settings.rate_limit_per_recipient
                   or settings.rate_limit_global else "")
        log.warning(
            f"REDIS_URL is {'memory://' if settings.redis_url else 'empty'}: idempotency records live in this "
            f"process only and are not shared between workers or replicas; running a single worker process{counted}"
        )


def _warn_unaligned_dkim(settings: Settings) -> None:
    """DKIM_DOMAIN outside a relay's From domain: the signature verifies, but DMARC needs d= aligned with From."""
    key = settings.dkim
    if key is None or not key.domain:  # without DKIM_DOMAIN each mail is signed for its own From domain
        return
    for relay in settings.relays:
        from_domain = relay.from_address.rpartition("@")[2].lower()
        if from_domain and not aligned(key.domain, from_domain):
            log.warning(f"DKIM_DOMAIN {key.domain} is not aligned with the From domain {from_domain} of relay "
                        f"{relay.name}: receivers' DMARC will not count the signature on its mails; use a From "
                        f"address under {key.domain}, or leave DKIM_DOMAIN empty to sign each mail for its own "
                        "From domain (with the key published there too)")
