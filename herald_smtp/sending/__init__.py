"""The send use case: from a request body to one mail, sent at most once per idempotency key."""
