"""herald-smtp: sends Herald's verification mail over SMTP, once per idempotency key."""
