"""OpenTelemetry tracing: everything herald-smtp does with OpenTelemetry, and nothing else does it.

    setup(settings)       in a gunicorn worker after the fork: the SDK provider, OTLP/HTTP exporter, batching
    use(provider)         the provider to trace with (tests pass one with an in-memory exporter); None: off
    instrument_app(app)   the HTTP request span (Flask instrumentation) and the Redis command spans
    shutdown()            flush the spans still batched (at worker exit)
    span(name, attrs)     a child span of the current one, as a context manager
    set_attributes, fail  on the current span
    log_ids()             (trace_id, span_id) in hex for the log lines, or None

One module-level "current tracer" is set once per worker, like the logging
configuration: code on the request path calls span() without being handed a
tracer. With tracing off (no OTLP endpoint, OTEL_SDK_DISABLED=true; config/loading.py
decides once at startup) the tracer stays None, span() returns one shared no-op
context manager, the helpers return at once, and nothing from opentelemetry is
imported: the cost on the request path is a global lookup and a call.

The SDK and the exporter read the OTEL_* variables themselves (endpoint,
headers, sampler, timeouts); only the service name comes from Settings.
What the spans carry never includes a recipient in clear (callers pass
addresses.mask_email), a subject, a body, a code, a key or a password:
exception messages are not recorded, only their type and a description the
caller has masked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings

# Set by use(): the tracer, and the pieces of opentelemetry the helpers need, imported only then.
_tracer: Any = None
_provider: Any = None
_api: Any = None  # opentelemetry.trace
_redis_instrumentor: Any = None

# The request span's status comes from the answer, not from the HTTP code (see instrument_app).
_ANSWER_FAILED = "herald_smtp.answer_failed"


class _NoopSpan:
    """The one context manager span() returns while tracing is off."""

    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc_info) -> None:
        return None


NOOP = _NoopSpan()


def active() -> bool:
    return _tracer is not None


def setup(settings: Settings) -> None:
    """In each worker after the fork (gunicorn post_fork): the batching exporter's thread must be the worker's."""
    if not settings.tracing_enabled:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)


def use(provider) -> None:
    """Trace with `provider` from now on in this process; None turns tracing off again."""
    global _tracer, _provider, _api
    if provider is None:
        _tracer = _provider = None
        _instrument_redis(None)
        return
    from opentelemetry import trace

    _api = trace
    _provider = provider
    _tracer = provider.get_tracer("herald_smtp")
    _instrument_redis(provider)


def shutdown() -> None:
    """Flush and stop the exporter (gunicorn worker_exit): the spans of the last requests are not lost."""
    if _provider is not None and hasattr(_provider, "shutdown"):
        _provider.shutdown()


def instrument_app(app) -> None:
    """The request span of every HTTP request, continuing the caller's W3C traceparent when it sends one."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument_app(app, tracer_provider=_provider, response_hook=_request_status)
    app.after_request(_annotate_request)


def _annotate_request(response):
    from flask import g

    error_code = getattr(response, "error_code", "")
    attributes = {"herald.error_code": error_code,
                  "herald.replayed": response.headers.get("Idempotent-Replayed") == "true"}
    if "request_id" in g:
        attributes["herald.request_id"] = g.request_id
    set_attributes(attributes)
    # Every answer that is not ok:true has an error_code or an error status (health checks have no error_code).
    setattr(g, _ANSWER_FAILED, error_code or ("" if response.status_code < 400 else str(response.status_code)))
    return response


def _request_status(span, status: str, response_headers) -> None:
    # The Flask instrumentation has just set the status from the HTTP code (UNSET for a 4xx on a server span);
    # this hook runs after it, so the answer decides: ERROR exactly when the answer is not ok:true.
    from flask import g

    failed = g.get(_ANSWER_FAILED)
    if span is not None and span.is_recording() and failed:
        span.set_status(_api.Status(_api.StatusCode.ERROR, failed))


def _instrument_redis(provider) -> None:
    """The Redis command spans: the command name only, its arguments (keys, values) sanitized to `?`."""
    global _redis_instrumentor
    if _redis_instrumentor is not None:
        _redis_instrumentor.uninstrument()
        _redis_instrumentor = None
    if provider is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    _redis_instrumentor = RedisInstrumentor()
    _redis_instrumentor.instrument(tracer_provider=provider)


class _Span:
    """An SDK span as the current one; an exception marks it ERROR by its type only (messages may hold data)."""

    __slots__ = ("_manager", "_span")

    def __init__(self, name: str, attributes: dict | None):
        self._manager = _tracer.start_as_current_span(name, attributes=attributes, record_exception=False,
                                                      set_status_on_exception=False)

    def __enter__(self):
        self._span = self._manager.__enter__()
        return self._span

    def __exit__(self, kind, exc, traceback):
        if exc is not None and self._span.is_recording():
            self._span.set_attribute("error.type", kind.__name__)
            if self._span.status.status_code is _api.StatusCode.UNSET:
                self._span.set_status(_api.Status(_api.StatusCode.ERROR, kind.__name__))
        return self._manager.__exit__(kind, exc, traceback)


def span(name: str, attributes: dict | None = None):
    """A child of the current span for the `with` block; the shared no-op while tracing is off."""
    if _tracer is None:
        return NOOP
    return _Span(name, attributes)


def set_attributes(attributes: dict) -> None:
    """On the current span; None values are left out."""
    if _tracer is None:
        return
    current = _api.get_current_span()
    if current.is_recording():
        current.set_attributes({key: value for key, value in attributes.items() if value is not None})


def fail(description: str) -> None:
    """Mark the current span ERROR; `description` must already be masked (addresses.mask_addresses)."""
    if _tracer is None:
        return
    current = _api.get_current_span()
    if current.is_recording():
        current.set_status(_api.Status(_api.StatusCode.ERROR, description))


def add_event(name: str, attributes: dict | None = None) -> None:
    if _tracer is None:
        return
    current = _api.get_current_span()
    if current.is_recording():
        current.add_event(name, attributes or {})


def log_ids() -> tuple[str, str] | None:
    """The current trace and span id in W3C hex form, while tracing is on and a span is valid."""
    if _tracer is None:
        return None
    context = _api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
