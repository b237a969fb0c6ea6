"""The "CPU per send by feature set" section of the bench report (issue #25) and its Targets rows, rendered from a
small Run: totals over the rounds, the ratios to the floor measured in the same rounds and to the tree before #25,
the headline CPU row taken against the main table's floor, and what a run without some of it says.
"""

from __future__ import annotations

import pytest

from bench.report import feature_bars, feature_sets, ratios, render
from bench.results import (FEATURES_BEFORE, FEATURES_ED25519, FEATURES_FLOOR, FEATURES_NO_SUPPRESSION,
                           FEATURES_OAUTH, FEATURES_PASSWORD, FEATURES_RSA, FLOOR, HERALD, LOAD_DURING_FEATURES,
                           SKIPPED_FEATURES_BEFORE, Latencies, Machine, Measurement, Run)

HEADLINE = ("0 ms RTT, concurrency 16, every feature on: herald-smtp CPU ms per fresh send / HTTP floor CPU ms per "
            "request")


def _sends(setup: str, requests: int, cpu_ms: float, p50: float = 10.0) -> Measurement:
    return Measurement(setup, None if setup == FEATURES_FLOOR else 0.0, None if setup == FEATURES_FLOOR else True,
                       16, "wrk", Latencies(requests, 0, 2.0, p50, p50 * 2, p50 * 3), cpu_ms_per_request=cpu_ms)


def _round(before: float, password: float, oauth: float, floor: float) -> list[Measurement]:
    """One round of the section, in CPU ms per request; the others fixed."""
    return [_sends(FEATURES_BEFORE, 400, before), _sends(FEATURES_NO_SUPPRESSION, 1000, 1.0),
            _sends(FEATURES_PASSWORD, 1000, password), _sends(FEATURES_OAUTH, 1000, oauth),
            _sends(FEATURES_ED25519, 800, 1.5), _sends(FEATURES_RSA, 200, 8.0), _sends(FEATURES_FLOOR, 4000, floor)]


def _run(*measurements: Measurement, remarks: dict | None = None) -> Run:
    return Run(Machine("Test CPU 9000", 2, "3.11.7", "wrk 4.1.0"), "make bench", "2026-01-01T00:00:00+00:00",
               60.0, list(measurements), remarks=remarks or {})


def _main_floor(cpu_ms: float) -> Measurement:
    return Measurement(FLOOR, None, None, 16, "wrk", Latencies(6000, 0, 2.0, 5.0, 6.0, 7.0), cpu_ms_per_request=cpu_ms)


def test_the_section_totals_the_rounds_against_the_floor_and_the_tree_before():
    run = _run(*_round(4.0, 1.2, 1.0, 0.5), *_round(4.0, 1.2, 1.0, 0.4),
               remarks={LOAD_DURING_FEATURES: "0.50 0.40 0.30 at the start of the section, 1.00 at its end"})
    text = "\n".join(feature_sets(run))
    # floor: 8000 requests in 4 s at 0.5 and 0.4 ms: 0.45 ms; before: 800 in 4 s at 4.0 ms
    assert "| HTTP floor (bench/floor_app.py) | 2 | 8000 | 0 | 2000.0 (2000-2000) | 10.00 | 0.45 | 1.00 | - |" in text
    assert ("| before #25 (c2011bb), every feature on | 2 | 800 | 0 | 200.0 (200-200) | 10.00 | 4.00 | "
            "8.89 (8.00, 10.00) | 1.00 |") in text
    assert ("| every feature on, password AUTH | 2 | 2000 | 0 | 500.0 (500-500) | 10.00 | 1.20 | 2.67 (2.40, 3.00) | "
            "0.30 (0.30, 0.30) |") in text
    assert "| every feature on, XOAUTH2 token cached | 2 | 2000 | 0 | 500.0 (500-500) | 10.00 | 1.00 | 2.22" in text
    assert "| every feature on + DKIM RSA 2048 | 2 | 400 | 0 | 100.0 (100-100) | 10.00 | 8.00 | 17.78" in text
    assert "Status records cannot be turned off (MESSAGE_STATUS_TTL_SECONDS is 60 s at the least)" in text
    assert "0.50 0.40 0.30 at the start" in text


def test_the_section_shows_the_xoauth2_logins_and_token_requests_round_by_round():
    first, second = _round(4.0, 1.2, 1.0, 0.5), _round(4.0, 1.2, 1.0, 0.4)
    for measurement, logins, fetches in ((first[3], 31, 3), (second[3], 38, 0)):
        measurement.smtp = {"mails": 1000, "oauth_auths": logins, "oauth_token_fetches": fetches}
    text = "\n".join(feature_sets(_run(*first, *second)))
    assert ("XOAUTH2 logins at the SMTP server 31, 38 (new pooled connections); requests at the token endpoint "
            "3, 0.") in text


def test_the_headline_cpu_row_comes_first_and_takes_the_costlier_login_against_the_main_floor():
    run = _run(_main_floor(0.5), *_round(4.0, 1.2, 1.0, 0.45))
    rows = ratios(run)
    headline = rows[0]
    assert headline.name == HEADLINE and headline.target_text == "<= 2.5"
    assert headline.value == pytest.approx(1.2 / 0.5) and headline.verdict == "PASS"
    assert headline.detail == ("1.20 ms (every feature on, password AUTH) / 0.50 ms (HTTP floor, concurrency 16, wrk, "
                               "the Results table)")
    signed = {row.name: row for row in rows}
    ed25519 = signed[HEADLINE.replace("every feature on:", "every feature on + DKIM Ed25519:")]
    rsa = signed[HEADLINE.replace("every feature on:", "every feature on + DKIM RSA 2048:")]
    assert ed25519.value == pytest.approx(1.5 / 0.5) and ed25519.verdict == "MISS"
    assert rsa.value == pytest.approx(8.0 / 0.5) and rsa.verdict == "MISS"
    # The old throughput row stays, reported after the CPU rows.
    assert any(row.name == "0 ms RTT, concurrency 16: herald-smtp req/s / HTTP floor req/s" for row in rows[3:])
    document = render(run, None)
    targets = document.split("## Targets", 1)[1].split("##", 1)[0]
    assert targets.index(HEADLINE) < targets.index("req/s / HTTP floor req/s")
    assert f"| {HEADLINE} | 1.20 ms (every feature on, password AUTH) / 0.50 ms" in targets


def test_without_the_main_table_the_headline_takes_the_floor_of_the_same_rounds_and_says_so():
    run = _run(*_round(4.0, 1.0, 1.8, 0.6))
    headline = ratios(run)[0]
    assert headline.value == pytest.approx(1.8 / 0.6) and headline.verdict == "MISS"
    assert headline.detail == ("1.80 ms (every feature on, XOAUTH2 token cached) / 0.60 ms (HTTP floor, concurrency "
                               "16, wrk, measured in the feature-set rounds: no Results-table floor in this run)")


def test_a_run_without_the_section_says_so_and_its_rows_stay_out_of_the_results_table():
    herald = Measurement(HERALD, 0.0, True, 16, "wrk", Latencies(100, 0, 1.0, 5.0, 6.0, 7.0))
    assert feature_sets(_run(herald)) == ["Not measured in this run."]
    assert ratios(_run(herald, _main_floor(0.5)))[0].value_text == "not measured"
    document = render(_run(herald, _main_floor(0.5), *_round(4.0, 1.2, 1.0, 0.45)), None)
    results = document.split("## Results", 1)[1].split("##", 1)[0]
    assert "| herald-smtp | 0 |" in results and "every feature on" not in results and "feature-set" not in results
    assert "## CPU per send by feature set" in document


def test_without_the_tree_before_the_section_says_why_and_compares_the_rest():
    why = "the tree before #25 (c2011bb) was not measured: git is not on PATH"
    measurements = [m for m in _round(4.0, 1.2, 1.0, 0.5) if m.setup != FEATURES_BEFORE]
    text = "\n".join(feature_sets(_run(*measurements, remarks={SKIPPED_FEATURES_BEFORE: why})))
    assert "> The tree before #25 (c2011bb) was not measured: git is not on PATH." in text
    assert ("| every feature on, password AUTH | 1 | 1000 | 0 | 500.0 (500-500) | 10.00 | 1.20 | 2.40 (2.40) | - |"
            in text)


def test_the_plot_bars_are_cpu_per_request_by_variant_with_the_target_line():
    bars = feature_bars(_run(*_round(4.0, 1.2, 1.0, 0.5), *_round(4.0, 1.2, 1.0, 0.4)))
    assert [label for label, _ in bars.values] == ["HTTP floor", "before #25", "suppression off", "password AUTH",
                                                   "XOAUTH2 cached", "+ DKIM Ed25519", "+ DKIM RSA 2048"]
    assert dict(bars.values)["password AUTH"] == pytest.approx(1.2)
    assert bars.target_ms == pytest.approx(2.5 * 0.45)
    assert feature_bars(_run(_main_floor(0.5))) is None
