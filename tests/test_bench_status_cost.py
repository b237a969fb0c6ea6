"""The status cost measurement's own parts (bench/status_cost.py, its report section): Redis's counts read from a
real redis-server, the old tree extracted from a real git repository and imported first, the section rendered
from a small Run.
"""

from __future__ import annotations

import subprocess

import pytest

from bench.processes import _child_env
from bench.report import render, status_cost as status_cost_section
from bench.results import (HERALD, LOAD_DURING_STATUS_COST, SKIPPED_BEFORE, STATUS_AFTER, STATUS_BEFORE,
                           STATUS_NO_SUPPRESSION, Latencies, Machine, Measurement, Run)
from bench.status_cost import RedisCounts, imported_from, old_tree, redis_delta

_RESERVE_LIKE = """
local existing = redis.call('GET', KEYS[1])
if not existing then redis.call('SET', KEYS[1], ARGV[1]) end
return existing
"""


def _counts(client) -> RedisCounts:
    return RedisCounts.from_info(client.info("all"))


def test_a_script_is_one_round_trip_and_its_own_commands_are_counted_by_name(redis_client):
    script = redis_client.register_script(_RESERVE_LIKE)
    redis_client.script_load(_RESERVE_LIKE)  # so the call below is one EVALSHA, not NOSCRIPT then a load
    before = _counts(redis_client)
    script(keys=["bench:key"], args=["value"])
    delta = redis_delta(before, _counts(redis_client))
    assert delta["round_trips"] == 1
    assert delta["calls"] == {"evalsha": 1, "get": 1, "set": 1}
    assert delta["cpu_seconds"] >= 0


def test_the_snapshots_themselves_are_not_counted(redis_client):
    before = _counts(redis_client)
    delta = redis_delta(before, _counts(redis_client))
    assert delta["round_trips"] == 0 and delta["calls"] == {}
    before = _counts(redis_client)
    redis_client.get("bench:other")
    redis_client.set("bench:other", "1")
    delta = redis_delta(before, _counts(redis_client))
    assert delta["round_trips"] == 2 and delta["calls"] == {"get": 1, "set": 1}


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@herald.test",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository whose first commit has a herald_smtp package of its own."""
    root = tmp_path / "repo"
    (root / "herald_smtp").mkdir(parents=True)
    (root / "herald_smtp" / "__init__.py").write_text("WHICH = 'old'\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "old")
    (root / "herald_smtp" / "__init__.py").write_text("WHICH = 'new'\n")
    _git(root, "commit", "-q", "-am", "new")
    return root


def test_the_old_tree_is_extracted_once_and_imported_first(repo, tmp_path):
    into = tmp_path / "var" / "before"
    tree = old_tree(repo, into, _git(repo, "rev-parse", "--short", "HEAD~1"))
    assert tree.missing == "" and tree.path == into
    assert (into / "herald_smtp" / "__init__.py").read_text() == "WHICH = 'old'\n"
    (into / "kept").write_text("a second call reuses the copy")
    assert old_tree(repo, into, tree.commit).path == into and (into / "kept").exists()
    # The venv has the current tree installed editable: the copy first on PYTHONPATH must still win.
    assert imported_from(_child_env({}, first_on_path=into), tmp_path) == into.resolve() / "herald_smtp"


def test_a_stale_copy_of_another_commit_is_replaced(repo, tmp_path):
    into = tmp_path / "before"
    old_tree(repo, into, "HEAD")
    (into / "stale").write_text("from the other commit's copy")
    tree = old_tree(repo, into, "HEAD~1")
    assert tree.path == into and not (into / "stale").exists()
    assert (into / "herald_smtp" / "__init__.py").read_text() == "WHICH = 'old'\n"


def test_a_missing_commit_or_history_says_why_and_extracts_nothing(repo, tmp_path):
    tree = old_tree(repo, tmp_path / "a", "0123456789abcdef0123456789abcdef01234567")
    assert tree.path is None and "not in this checkout's history" in tree.missing
    no_git = tmp_path / "tarball"
    no_git.mkdir()
    tree = old_tree(no_git, tmp_path / "b", "d7d430c")
    assert tree.path is None and "d7d430c" in tree.missing
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _sends(setup: str, requests: int, cpu_ms: float, round_trips: int, gets: int, redis_cpu: float) -> Measurement:
    return Measurement(setup, 0.0, True, 16, "wrk", Latencies(requests, 0, 2.0, 10.0, 20.0, 30.0),
                       cpu_ms_per_request=cpu_ms,
                       redis={"round_trips": round_trips, "cpu_seconds": redis_cpu,
                              "calls": {"evalsha": 3 * requests, "get": gets, "client": round_trips - 3 * requests}})


def _status_run(*measurements: Measurement, remarks: dict | None = None) -> Run:
    return Run(Machine("Test CPU 9000", 2, "3.11.7", "wrk 4.1.0"), "make bench", "2026-01-01T00:00:00+00:00",
               60.0, list(measurements), remarks=remarks or {})


def test_the_section_totals_the_rounds_and_divides_after_by_before():
    run = _status_run(_sends(STATUS_BEFORE, 1000, 2.0, 3010, 3000, 0.1),
                      _sends(STATUS_AFTER, 800, 2.5, 2408, 3200, 0.1),
                      _sends(STATUS_NO_SUPPRESSION, 900, 2.2, 2709, 2700, 0.1),
                      _sends(STATUS_BEFORE, 1000, 2.0, 3010, 3000, 0.1),
                      _sends(STATUS_AFTER, 800, 2.5, 2408, 3200, 0.1),
                      remarks={LOAD_DURING_STATUS_COST: "0.50 0.40 0.30 at the start of the section, 1.00 at its end"})
    text = "\n".join(status_cost_section(run))
    # before: 2000 requests in 4 s, 2.0 CPU ms, 0.2 s of Redis CPU, 6020 round trips; after: 1600 in 4 s
    assert "| before (d7d430c) | 2 | 2000 | 0 | 500.0 (500-500) | 10.00 | 2.00 | 0.100 | 3.01 | 3.00 | 6.01 |" in text
    assert "| after | 2 | 1600 | 0 | 400.0 (400-400) | 10.00 | 2.50 | 0.125 | 3.01 | 3.00 | 7.01 |" in text
    assert "| after / before (d7d430c) | 0.80 (0.80, 0.80) | 1.25 (1.25, 1.25) | 1.25 (1.25, 1.25) | 1.00 |" in text
    assert "| GET | 3.00 | 4.00 | 3.00 |" in text
    assert "3.01 before (3.00 EVALSHA), 3.01 after (3.00 EVALSHA)" in text
    assert "0.50 0.40 0.30 at the start" in text


def test_without_the_old_tree_the_section_says_why_and_shows_the_rest():
    why = "the tree before (d7d430c) was not measured: git is not on PATH"
    run = _status_run(_sends(STATUS_AFTER, 800, 2.5, 2408, 3200, 0.1),
                      _sends(STATUS_NO_SUPPRESSION, 900, 2.2, 2709, 2700, 0.1), remarks={SKIPPED_BEFORE: why})
    text = "\n".join(status_cost_section(run))
    assert "> The tree before (d7d430c) was not measured: git is not on PATH." in text
    assert "before (d7d430c) |" not in text.replace("/ before (d7d430c) |", "")
    assert "| after / after, suppression off (SUPPRESSION_TTL_SECONDS=0) | 0.89 (0.89) | 1.14 (1.14) |" in text


def test_the_status_rows_stay_out_of_the_results_table_and_a_run_without_them_says_so():
    herald = Measurement(HERALD, 0.0, True, 16, "wrk", Latencies(100, 0, 1.0, 5.0, 6.0, 7.0))
    document = render(_status_run(herald, _sends(STATUS_AFTER, 800, 2.5, 2408, 3200, 0.1)), None)
    results = document.split("## Results", 1)[1].split("## From concurrency", 1)[0]
    assert "| herald-smtp | 0 |" in results and STATUS_AFTER not in results
    assert status_cost_section(_status_run(herald)) == ["Not measured in this run."]
