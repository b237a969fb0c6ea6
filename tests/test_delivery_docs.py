"""docs/DELIVERY.md shows exactly the classification table the code uses."""

from pathlib import Path

from herald_smtp.outcomes import Outcome
from herald_smtp.smtp.classify import PHASES, RULES, markdown_table, outcome_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "DELIVERY.md"


def test_docs_show_the_table_from_the_code():
    assert markdown_table() in DOC.read_text(encoding="utf-8")


def test_every_rule_names_a_known_outcome_and_phase():
    for phases, _, outcome, _, _ in RULES:
        assert outcome in Outcome
        assert set(phases) <= set(PHASES)


def test_key_rows_of_the_table():
    assert outcome_for("rcpt", "5xx") is Outcome.RECIPIENT_REJECTED
    assert outcome_for("auth", "5xx") is Outcome.SMTP_SETUP
    assert outcome_for("after_data", "2xx") is Outcome.SENT
    assert outcome_for("after_data", "network") is Outcome.SMTP_UNKNOWN
    assert Outcome.SMTP_UNKNOWN.keep and not Outcome.SMTP_TRANSIENT.keep


def test_every_outcome_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for outcome in Outcome:
        if outcome.error_code in ("send_failed", "provider_down", "invalid_destination") or outcome is Outcome.SENT:
            assert f"| {outcome.value} |" in text, outcome
