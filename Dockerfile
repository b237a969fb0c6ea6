# herald-smtp container image: gunicorn serving wsgi:app as a non-root user.
#
#   docker build -t herald-smtp .
#   docker run --rm -p 8084:8084 -e SMTP_HOST=... -e SMTP_FROM=... herald-smtp
#
# Configuration comes only from the environment at run time (see .env.example);
# nothing secret is baked into the image, and no .env is copied (.dockerignore).
# A pinned patch release, not the moving 3.11 tag: from 3.11.10 on (gh-121650, CVE-2024-6923) the email package
# re-encodes a newline that an RFC 2047 encoded-word decodes to, instead of writing it into the header, where
# "=0D=0A" started a header line of its own. The service refuses encoded-words itself; the pin is the second guard.
FROM python:3.11.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=:8084 \
    PROMETHEUS_MULTIPROC_DIR=/var/run/herald-smtp/metrics

# A fixed, unprivileged UID/GID so that Kubernetes' runAsUser/runAsNonRoot
# and volume permissions can rely on it.
RUN groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin herald

# Install the package (its dependencies and the `otel` extra: tracing is on once
# OTEL_EXPORTER_OTLP_ENDPOINT is set) from only the files it needs,
# then drop the sources: the app is imported from site-packages.
COPY pyproject.toml setup.cfg README.md /src/
COPY herald_smtp /src/herald_smtp
RUN pip install --no-cache-dir "/src[otel]" \
 && rm -rf /src

WORKDIR /app
COPY wsgi.py gunicorn.conf.py /app/
# Byte-compile now: at run time the root filesystem may be read-only.
# The metrics directory must be writable by the app user; in Kubernetes an
# emptyDir is mounted over it.
RUN python -m compileall -q /app \
 && mkdir -p "$PROMETHEUS_MULTIPROC_DIR" \
 && chown -R 10001:10001 "$PROMETHEUS_MULTIPROC_DIR"

USER 10001:10001
EXPOSE 8084

# slim images have no curl: ask /healthz (liveness, checks nothing external) with Python,
# on the port from PORT (":8084", "8084" or "host:8084"; default 8084).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = (os.environ.get('PORT') or '8084').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=4).status == 200 else 1)"]

# gunicorn runs as PID 1 and handles SIGTERM as a graceful stop: in-flight
# requests finish within its graceful timeout (45 s with the default settings).
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
