"""Idempotency records shared by every worker and replica: the interface and its stores."""
