"""Real servers and helpers for the tests: Redis, SMTP, herald-smtp as a process, HTTP helpers."""
