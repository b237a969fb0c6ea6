"""docs/DELIVERY.md shows exactly the classification table the code uses."""

from pathlib import Path

from herald_smtp.mailer.classify import PHASES, RULES, markdown_table, outcome_for
from herald_smtp.outcomes import OUTCOMES

DOC = Path(__file__).resolve().parent.parent / "docs" / "DELIVERY.md"


def test_docs_show_the_table_from_the_code():
    assert markdown_table() in DOC.read_text(encoding="utf-8")


def test_every_rule_names_a_known_outcome_and_phase():
    for phases, evidence, outcome, _ in RULES:
        assert outcome in OUTCOMES
        assert set(phases) <= set(PHASES)


def test_key_rows_of_the_table():
    assert outcome_for("rcpt", "5xx") == "recipient_rejected"
    assert outcome_for("auth", "5xx") == "smtp_setup"
    assert outcome_for("after_data", "2xx") == "sent"
    assert outcome_for("after_data", "network") == "smtp_unknown"
    assert OUTCOMES["smtp_unknown"].keep and not OUTCOMES["smtp_transient"].keep


def test_every_outcome_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for name in OUTCOMES:
        if OUTCOMES[name].error_code in ("send_failed", "provider_down", "invalid_destination") or name == "sent":
            assert f"| {name} |" in text, name
