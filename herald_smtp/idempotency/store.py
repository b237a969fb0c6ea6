"""open_store(): the idempotency store REDIS_URL names, chosen by its topology (as the `limits` library
chooses its storage by the URL's scheme). The URL grammar is herald_smtp/redis_target.py.

    None (empty REDIS_URL or memory://)         MemoryStore: this process only (one worker process)
    single, unix, sentinel, cluster             RedisStore: shared by every worker and replica
"""

from __future__ import annotations

from typing import Callable

from ..redis_target import RedisTarget
from .base import Store
from .memory import MemoryStore
from .redis import RedisStore

# A Redis topology -> the store for it (no target at all: the in-process store).
_FACTORIES: dict[str, Callable[[RedisTarget, str], Store]] = {
    "single": RedisStore.from_target,
    "unix": RedisStore.from_target,
    "sentinel": RedisStore.from_target,
    "cluster": RedisStore.from_target,
}


def open_store(target: RedisTarget | None, prefix: str) -> Store:
    """The store for a parsed REDIS_URL (Settings.redis_target). Nothing is dialled here: a Redis client is
    built at the first operation."""
    if target is None:
        return MemoryStore()
    return _FACTORIES[target.topology](target, prefix)
