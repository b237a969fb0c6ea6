"""open_store(url, prefix): the backend for a REDIS_URL, chosen by its scheme as the `limits` library does.

    empty or memory://            the in-process store (one worker process)
    redis://, rediss://, unix://  Redis, shared by every worker and replica
"""

from __future__ import annotations

from .base import Store

# scheme -> backend; the scale-out work adds redis+sentinel and redis+cluster here.
_BACKENDS = {"memory": "memory", "redis": "redis", "rediss": "redis", "unix": "redis"}
EXPECTED_FORM = "a URL starting with memory://, redis://, rediss:// or unix://"


def backend_for(url: str) -> str:
    """'memory' or 'redis'; ValueError naming the accepted forms for anything else."""
    if not url:
        return "memory"
    scheme, found, _ = url.partition("://")
    backend = _BACKENDS.get(scheme) if found else None
    if backend is None:
        raise ValueError(EXPECTED_FORM)
    return backend


def open_store(url: str, prefix: str) -> Store:
    if backend_for(url) == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    from .redis import RedisStore

    return RedisStore.from_url(url, prefix)
