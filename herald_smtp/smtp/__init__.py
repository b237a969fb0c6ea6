"""SMTP delivery: connections, the transaction phase by phase, retries, the circuit breaker."""
