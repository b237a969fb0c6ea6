"""Alert rules and dashboard: their shape, the PrometheusRule copy, and metric names the service really exports.

The rules' behaviour is checked by promtool on synthetic series (tests/test_alert_rules.py);
here every PromQL expression of deploy/prometheus/alerts.yaml and deploy/grafana/herald-smtp.json
is compared with what a real `herald-smtp serve` exposes on /metrics after real traffic.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from herald_smtp.config import settings_from
from tests.support.client import API_KEY, post, smtp_env
from tests.support.herald_process import HeraldProcess
from tests.support.markdown import github_anchors
from tests.support.net import LOCALHOST, free_port

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "herald-smtp.json"
TROUBLESHOOTING = ROOT / "docs" / "TROUBLESHOOTING.md"
EXPECTED_ALERTS = {"HeraldSmtpSendFailures", "HeraldSmtpNoSuccessfulSend", "HeraldSmtpCircuitOpen",
                   "HeraldSmtpIdempotencyStoreErrors", "HeraldSmtpSlowSends", "HeraldSmtpReplicaNotReady"}
# Series that Prometheus itself writes for every scrape target.
PROMETHEUS_OWN = {"up"}


# --- PromQL ------------------------------------------------------------------------------

_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                 "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (no PromQL parser for Python; enough for ours).

    Strings, label matchers, ranges, label lists and Grafana variables go first; what is left
    that is neither a keyword, nor a number, nor a function or aggregation (followed by "(") is
    a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_finds_the_selected_metrics_only():
    expr = ('histogram_quantile(0.95, sum by (namespace, le) (rate(a_bucket{x="y z", le!="1e3"}[5m]))) '
            '> on (namespace) group_left () 0.5 * max without (pod) (b_seconds offset 1m) '
            'or label_replace(c_total, "d", "e", "f", "") unless bool up == 1e3 and $var')
    assert metric_names(expr) == {"a_bucket", "b_seconds", "c_total", "up"}


# --- the files ---------------------------------------------------------------------------


def load_alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in load_dashboard()["panels"] for target in panel["targets"]]


def alert_exprs() -> list[str]:
    return [rule["expr"] for rule in load_alerts()]


def test_alerts_are_the_six_of_issue_17_each_with_severity_and_first_steps():
    rules = load_alerts()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    anchors = github_anchors(TROUBLESHOOTING.read_text())
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].startswith("herald-smtp: "), name
        assert "Check first" in annotations["description"], name
        assert "`herald-smtp doctor" in annotations["description"], name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/TROUBLESHOOTING.md" and anchor == name.lower(), name
        assert anchor in anchors, f"{name}: docs/TROUBLESHOOTING.md has no section #{anchor}"


def test_every_alert_has_unit_tests_that_fire_and_that_do_not():
    # promtool runs them (tests/test_alert_rules.py); this checks that none is left out.
    cases = [case for path in sorted((ALERTS.parent / "tests").glob("*.yaml"))
             for test in yaml.safe_load(path.read_text())["tests"] for case in test.get("alert_rule_test", [])]
    for name in EXPECTED_ALERTS:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"no unit test in which {name} fires"
        assert any(not case.get("exp_alerts") for case in mine), f"no unit test in which {name} stays quiet"


def markdown_section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else None]


@pytest.mark.parametrize("doc, heading", [("TROUBLESHOOTING.md", "## Alerts"),
                                          ("DEPLOYMENT.md", "## Alerts and dashboard")])
def test_the_alert_docs_links_resolve(doc, heading):
    section = markdown_section(ROOT / "docs" / doc, heading)
    links = re.findall(r"\]\(([^)\s]*)\)", section)
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        assert not re.match(r"[a-z]+:", target), f"{doc} links outside the repository: {link}"
        path = (ROOT / "docs" / target) if target else ROOT / "docs" / doc
        assert path.is_file(), f"{doc}: {link} names no file"
        if anchor:
            assert anchor in github_anchors(path.read_text()), f"{doc}: {link} names no section"


def test_the_prometheusrule_holds_the_same_groups():
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"] == "herald-smtp"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "herald-smtp"
    assert "namespace" not in rule["metadata"]
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], \
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml"


def test_the_prometheusrule_is_applied_on_its_own():
    # Listed in the kustomization, `kubectl apply -k` fails on every cluster without the Operator.
    kustomization = yaml.safe_load((PROMETHEUS_RULE.parent / "kustomization.yaml").read_text())
    assert PROMETHEUS_RULE.name not in kustomization["resources"]


def test_the_dashboard_shows_what_issue_17_asks_for():
    dashboard = load_dashboard()
    assert dashboard["uid"] == "herald-smtp" and dashboard["title"] == "herald-smtp"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
    by_title = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in dashboard["panels"]}
    wanted = {
        "Send requests by error_code": ("herald_smtp_requests_total", "sum by (error_code)"),
        "Send duration percentiles": ("herald_smtp_send_duration_seconds_bucket", "histogram_quantile(0.95"),
        "Idempotent replays and conflicts": ("herald_smtp_idempotent_replays_total",),
        "SMTP connections opened vs reused": ("herald_smtp_smtp_connections_opened_total",
                                              "herald_smtp_smtp_connections_reused_total"),
        "SMTP circuit state per relay": ("herald_smtp_smtp_circuit_state", "relay"),
        "Store errors": ("herald_smtp_idempotency_store_errors_total",),
    }
    for title, parts in wanted.items():
        assert title in by_title, title
        for part in parts:
            assert part in by_title[title], (title, part)


def test_dashboard_works_with_and_without_a_relay_label():
    # Per-relay panels group `by (... relay ...)`: without the label it is one empty group, with it one per relay.
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            if re.match(r"herald_smtp_(send_duration|smtp_connections|smtp_retries|smtp_circuit)", name):
                assert re.search(r"\bby \([^)]*\brelay\b", expr), expr


# --- against the real service -------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """Sample name -> value (summed over label sets) on /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory, _smtp_session, redis_url) -> dict[str, dict[str, float]]:
    """/metrics of two real services (2 gunicorn workers each) after traffic that touches every metric.

    "redis": on the real Redis, a send, a replay, a conflict, a rate limit, a ready probe.
    "no_redis": Redis does not answer, IDEMPOTENCY_FAILURE_MODE=closed: store errors, not ready.
    """
    auth = {"X-API-Key": API_KEY}
    base = smtp_env(_smtp_session) | {"API_KEY": API_KEY, "WEB_CONCURRENCY": "2", "SMTP_TIMEOUT_SECONDS": "7"}
    mail = {"to": "metrics@example.com", "params": {"code": "246810"}}
    out = {}
    env = base | {"REDIS_URL": redis_url, "RATE_LIMIT_PER_RECIPIENT": "2/60s"}
    with HeraldProcess(tmp_path_factory.mktemp("metrics-redis"), env) as service:
        assert post(service.url, mail, auth | {"Idempotency-Key": "metrics-1"})[0] == 200
        _, _, headers = post(service.url, mail, auth | {"Idempotency-Key": "metrics-1"})
        assert headers.get("Idempotent-Replayed") == "true"
        other_code = {**mail, "params": {"code": "135790"}}
        assert post(service.url, other_code, auth | {"Idempotency-Key": "metrics-1"})[0] == 409
        assert post(service.url, mail, auth)[0] == 200
        assert post(service.url, mail, auth)[0] == 429
        assert get(service.url + "/readyz") == 200
        out["redis"] = scrape(service.url)
    env = base | {"REDIS_URL": f"redis://{LOCALHOST}:{free_port()}/0", "IDEMPOTENCY_FAILURE_MODE": "closed"}
    with HeraldProcess(tmp_path_factory.mktemp("metrics-no-redis"), env) as service:
        assert post(service.url, mail, auth | {"Idempotency-Key": "metrics-2"})[0] == 503
        assert get(service.url + "/readyz") == 503
        out["no_redis"] = scrape(service.url)
    return out


@pytest.fixture(scope="module")
def exported(scrapes) -> set[str]:
    return {name for samples in scrapes.values() for name in samples}


def test_readiness_and_the_time_budget_are_exported(scrapes):
    assert scrapes["redis"]["herald_smtp_not_ready"] == 0
    assert scrapes["no_redis"]["herald_smtp_not_ready"] == 1  # the last /readyz said 503
    assert scrapes["no_redis"]["herald_smtp_idempotency_store_errors_total"] >= 1
    for samples in scrapes.values():
        assert samples["herald_smtp_smtp_timeout_seconds"] == 7


def test_not_ready_follows_the_last_readyz_answer(make_client, settings):
    client = make_client(settings)
    assert client.get("/readyz").status_code == 200
    assert scrape_client(client)["herald_smtp_not_ready"] == 0
    unconfigured = make_client(settings_from({}))
    assert unconfigured.get("/readyz").status_code == 503
    assert scrape_client(unconfigured)["herald_smtp_not_ready"] == 1


def scrape_client(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def test_the_service_exports_the_metrics_the_rules_rely_on(exported):
    for name in ("herald_smtp_requests_total", "herald_smtp_send_duration_seconds_bucket",
                 "herald_smtp_idempotency_store_errors_total", "herald_smtp_not_ready",
                 "herald_smtp_smtp_timeout_seconds", "herald_smtp_smtp_circuit_state"):
        assert name in exported, f"{name} not on /metrics: {sorted(exported)}"


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_expression_names_only_exported_metrics(exported, source):
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr}"
        unknown = names - exported - PROMETHEUS_OWN
        assert not unknown, f"{source}: {sorted(unknown)} not exported by the service (expression: {expr})"
