"""Bounces read back: the delivery status notifications that relays send to SMTP_BOUNCE_ADDRESS, read from an
IMAP mailbox (BOUNCE_IMAP_URL) by `herald-smtp bounces`, recorded on each message's status."""
