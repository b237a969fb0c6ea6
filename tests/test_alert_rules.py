"""The alert rules under promtool: syntax, and the unit tests on synthetic series (deploy/prometheus/tests/).

Collected only where promtool is on PATH (tests/conftest.py); elsewhere the run ends with
one line saying these did not run, and no test is counted as skipped or passed for them.
.ci/run installs promtool, so CI always runs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> str:
    assert PROMTOOL, "promtool is not on PATH (Debian: apt-get install prometheus)"
    done = subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_the_rule_file_is_valid():
    output = promtool("check", "rules", str(RULES / "alerts.yaml"))
    assert "SUCCESS: 6 rules found" in output, output


def test_the_rules_unit_tests_pass():
    tests = sorted((RULES / "tests").glob("*.yaml"))
    assert tests
    output = promtool("test", "rules", *map(str, tests))
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_the_dashboard_expressions_are_valid_promql(tmp_path):
    # promtool checks PromQL only inside rule files: each panel query becomes a recording rule,
    # with Grafana's variables replaced by what Grafana would put there.
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "herald-smtp.json").read_text())
    rules = [{"record": f"dashboard:panel{panel['id']}:{target['refId']}",
              "expr": target["expr"].replace("$__rate_interval", "1m").replace("$namespace", ".*")}
             for panel in dashboard["panels"] for target in panel["targets"]]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in output, output
