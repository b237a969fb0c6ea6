"""The DKIM cost measurement's own parts (bench/dkim_cost.py, its report section): the signature alone timed on
real keys made for the run, the section rendered from a small Run, its rows kept out of the Results table.
"""

from __future__ import annotations

from bench.dkim_cost import signing_alone, write_keys
from bench.report import dkim_cost as dkim_cost_section, render
from bench.results import (DKIM_ED25519, DKIM_OFF, DKIM_RSA, HERALD, LOAD_DURING_DKIM_COST, SIGN_ED25519, SIGN_OFF,
                           SIGN_RSA, Latencies, Machine, Measurement, Run)


def _sends(setup: str, requests: int, cpu_ms: float) -> Measurement:
    return Measurement(setup, 0.0, True, 16, "wrk", Latencies(requests, 0, 2.0, 10.0, 20.0, 30.0),
                       cpu_ms_per_request=cpu_ms)


def _alone(setup: str, cpu_ms: float) -> Measurement:
    return Measurement(setup, None, None, 1, "in-process", Latencies(100, 0, 1.0, cpu_ms, cpu_ms, cpu_ms),
                       cpu_ms_per_request=cpu_ms)


def _run(*measurements: Measurement, remarks: dict | None = None) -> Run:
    return Run(Machine("Test CPU 9000", 2, "3.11.7", "wrk 4.1.0"), "make bench", "2026-01-01T00:00:00+00:00",
               60.0, list(measurements), remarks=remarks or {})


def test_the_section_shows_cpu_per_mail_and_the_ratios_to_no_dkim():
    run = _run(_alone(SIGN_OFF, 0.0), _alone(SIGN_RSA, 6.0), _alone(SIGN_ED25519, 0.125),
               _sends(DKIM_OFF, 1000, 2.0), _sends(DKIM_RSA, 250, 8.0), _sends(DKIM_ED25519, 900, 2.5),
               _sends(DKIM_OFF, 1000, 2.0), _sends(DKIM_RSA, 250, 9.0), _sends(DKIM_ED25519, 900, 2.5),
               remarks={LOAD_DURING_DKIM_COST: "0.50 0.40 0.30 at the start of the section, 1.00 at its end"})
    text = "\n".join(dkim_cost_section(run))
    assert "| RSA 2048 | 100 | 6.000 | 6.000 | 6.000 |" in text
    assert "| Ed25519 | 100 | 0.125 | 0.125 | 0.125 |" in text
    assert "| no DKIM | 2 | 2000 | 0 | 500.0 (500-500) | 10.00 | 2.00 | - | - |" in text
    assert "| RSA 2048 | 2 | 500 | 0 | 125.0 (125-125) | 10.00 | 8.50 | 6.50 | 4.25 (4.00, 4.50) |" in text
    assert "| Ed25519 | 2 | 1800 | 0 | 450.0 (450-450) | 10.00 | 2.50 | 0.50 | 1.25 (1.25, 1.25) |" in text
    assert "0.50 0.40 0.30 at the start" in text


def test_the_dkim_rows_stay_out_of_the_results_table_and_a_run_without_them_says_so():
    herald = Measurement(HERALD, 0.0, True, 16, "wrk", Latencies(100, 0, 1.0, 5.0, 6.0, 7.0))
    text = render(_run(herald, _sends(DKIM_RSA, 250, 8.0), _alone(SIGN_RSA, 6.0)), plot_name=None)
    results = text.split("## Results", 1)[1].split("##", 1)[0]
    assert "| herald-smtp |" in results and "DKIM" not in results and "payload_for" not in results
    assert dkim_cost_section(_run(herald)) == ["Not measured in this run."]


def test_the_signature_alone_costs_cpu_only_with_a_key(tmp_path):
    keys = write_keys(tmp_path / "keys")
    assert {path.stat().st_mode & 0o777 for path in keys.values()} == {0o600}
    unsigned, unsigned_cpu = signing_alone(None, 200, 1.0)
    rsa, rsa_cpu = signing_alone(keys[DKIM_RSA], 20, 1.0)
    ed25519, ed25519_cpu = signing_alone(keys[DKIM_ED25519], 200, 1.0)
    assert unsigned.requests == 200 and rsa.requests == 20 and ed25519.requests == 200
    # An RSA signature is a modular exponentiation, Ed25519's far less; unsigned is returning the payload itself.
    assert rsa_cpu > ed25519_cpu > unsigned_cpu
