"""host:port as logs, gunicorn and URLs write it: an IPv6 address in brackets, or its colons would read as the port's.

Shared by the relay names (config), the bind address (config) and the Redis host lists (redis_target.py).
"""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
