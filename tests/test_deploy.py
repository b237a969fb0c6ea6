"""Deployment files: Dockerfile, .dockerignore, docker-compose.yml, deploy/kubernetes/, deploy/dovecot/.

There is no container engine or cluster here, so everything is checked offline:
the compose file and the manifests are parsed with PyYAML, the manifests are
validated against the Kubernetes JSON schemas that `kubernetes-validate` ships,
and the rules that tie them to the app (paths, ports, variable names, timeouts,
the metrics directory) are checked against the app's own code. The healthcheck
commands of the Dockerfile and the compose file are run against the real app, and the
bounce reader's probes against a real `herald-smtp bounces` process.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from herald_smtp.bounces.reader import RENEW_SECONDS
from herald_smtp.config import _VARIABLES, Settings, settings_from
from herald_smtp.tools.serve import gunicorn_options
from tests.support.herald_process import BOUNCES, HeraldProcess, bounce_reader
from tests.support.waiting import wait_for
from tests.support.net import LOCALHOST, free_port

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
NAME_LABEL = "app.kubernetes.io/name"
APP_NAME = "herald-smtp"
APP_PORT = 8084
# The bounce reader (`herald-smtp bounces`): a Deployment of its own, labelled apart from the service's pods.
READER_NAME = "herald-smtp-bounces"
READER_PORT = Settings().bounce_reader_port
DOVECOT = ROOT / "deploy" / "dovecot"
# Every variable the service reads (config/loading.py's table, plus the ones read elsewhere).
APP_VARIABLES = set(_VARIABLES) | {"PORT", "WEB_THREADS", "PROMETHEUS_MULTIPROC_DIR", "PYTHONUNBUFFERED"}
SECRET_VARIABLES = {"API_KEY", "SMTP_USER", "SMTP_PASSWORD", "REDIS_URL", "SMTP_FALLBACK_URLS", "IDEMPOTENCY_SECRET",
                    "SMTP_OAUTH_CLIENT_SECRET", "SMTP_OAUTH_REFRESH_TOKEN", "BOUNCE_IMAP_URL"}
# The ones that never belong in the ConfigMap (a REDIS_URL or SMTP_FALLBACK_URLS without a password may).
ALWAYS_SECRET = SECRET_VARIABLES - {"REDIS_URL", "SMTP_FALLBACK_URLS"}
PLACEHOLDER = "CHANGE_ME"
# The oldest Kubernetes minor we support, and the newest the installed schemas know.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


# --- loading -----------------------------------------------------------------------


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def herald_service(compose) -> dict:
    return compose["services"]["herald-smtp"]


@pytest.fixture(scope="module")
def bounces_service(compose) -> dict:
    return compose["services"]["bounces"]


# Custom resources: no Kubernetes JSON schema knows their kind, and they are applied on their
# own; tests/test_alerts.py checks the PrometheusRule.
CUSTOM_RESOURCE_FILES = {"prometheusrule.yaml"}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in {"kustomization.yaml", *CUSTOM_RESOURCE_FILES})


def manifests() -> list[dict]:
    return [doc for path in manifest_files() for doc in load_all_yaml(path)]


def one(kind: str, name: str = APP_NAME) -> dict:
    found = [doc for doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def only_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def deployment() -> dict:
    return one("Deployment")


@pytest.fixture(scope="module")
def pod_spec(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod_spec) -> dict:
    containers = pod_spec["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def pod_labels(deployment) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="module")
def reader_deployment() -> dict:
    return one("Deployment", READER_NAME)


@pytest.fixture(scope="module")
def reader_container(reader_deployment) -> dict:
    return only_container(reader_deployment)


@pytest.fixture(scope="module")
def reader_pod_labels(reader_deployment) -> dict:
    return reader_deployment["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="module", params=[APP_NAME, READER_NAME])
def each_deployment(request) -> dict:
    """The service's Deployment, then the bounce reader's: for the conventions both must follow."""
    return one("Deployment", request.param)


def resolve_port(container: dict, port) -> int:
    """A probe's or Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port {port!r} is not a named container port"
    return by_name[port]


def matches(selector: dict, labels: dict) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels selectors are expected here"
    match_labels = selector.get("matchLabels", selector)
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def graceful_timeout(env: dict[str, str]) -> int:
    """gunicorn's graceful timeout for the settings that this environment produces."""
    return gunicorn_options(settings_from(env))["graceful_timeout"]


def expand_compose_defaults(value: str) -> str:
    """${VAR:-default} / ${VAR-default} -> default; ${VAR} -> '' (no shell variables in tests)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def compose_environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: expand_compose_defaults("" if v is None else v) for k, v in env.items()}


def compose_published(service: dict) -> dict[int, int]:
    """container port -> host port, from the short ("[IP:]HOST:CONTAINER") or long syntax."""
    out = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out[int(entry["target"])] = int(entry.get("published", entry["target"]))
        else:
            parts = str(entry).split("/")[0].split(":")
            assert len(parts) >= 2, f"port {entry!r} is not published on the host"
            out[int(parts[-1])] = int(parts[-2])
    return out


def duration_seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ms|us|h|m|s)", value):
        total += float(number) * units[unit]
    return total


def quantity(value) -> float:
    """Kubernetes CPU or memory quantity -> a plain number (cores or bytes)."""
    value = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(suffixes.items(), key=lambda item: -len(item[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def prestop_sleep_seconds(container: dict) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if command[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        command = shlex.split(command[2])
    assert command and Path(command[0]).name == "sleep", f"preStop is not a sleep: {pre_stop}"
    return float(command[1])


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return instructions


def final_stage(instructions) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env(instructions) -> dict[str, str]:
    env = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            tokens = shlex.split(args)
            if len(tokens) == 2 and "=" not in tokens[0]:  # legacy "ENV NAME value"
                env[tokens[0]] = tokens[1]
            else:
                env.update(token.split("=", 1) for token in tokens)
    return env


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) command; fails for the shell form."""
    try:
        command = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not in exec form (JSON array): {args}")
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command


def healthcheck_command(instructions) -> list[str]:
    (args,) = [args for keyword, args in final_stage(instructions) if keyword == "HEALTHCHECK"]
    options, _, command = args.partition("CMD ")
    assert all(option.startswith("--") for option in options.split()), args
    return exec_form(command)


def test_dockerfile_base_is_python_311_slim():
    (base,) = [args for keyword, args in final_stage(dockerfile_instructions()) if keyword == "FROM"]
    image = base.split()[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_dockerfile_runs_as_the_fixed_non_root_user(pod_spec, container):
    users = [args for keyword, args in final_stage(dockerfile_instructions()) if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it, and the UID the manifests use.
    assert user.isdigit(), "USER should be numeric for runAsNonRoot"
    assert int(user) == container["securityContext"]["runAsUser"] == pod_spec["securityContext"]["runAsUser"]


def test_dockerfile_starts_gunicorn_in_exec_form():
    instructions = final_stage(dockerfile_instructions())
    commands = [args for keyword, args in instructions if keyword in ("CMD", "ENTRYPOINT")]
    assert commands, "no CMD or ENTRYPOINT"
    # Exec form: gunicorn is PID 1 and receives SIGTERM itself (a shell would not forward it).
    command = [part for args in commands for part in exec_form(args)]
    assert command[0] == "gunicorn"
    assert command[command.index("-c") + 1] == "gunicorn.conf.py"
    assert command[-1] == "wsgi:app"
    workdirs = [args for keyword, args in instructions if keyword == "WORKDIR"]
    copied_to_workdir = " ".join(args for keyword, args in instructions if keyword == "COPY")
    assert workdirs and "wsgi.py" in copied_to_workdir and "gunicorn.conf.py" in copied_to_workdir


def test_dockerfile_healthcheck_asks_healthz_with_python():
    command = healthcheck_command(dockerfile_instructions())
    assert command[0] == "python"  # slim images have no curl or wget
    assert "/healthz" in " ".join(command)


def test_dockerfile_copies_only_existing_needed_files_and_no_env_file():
    instructions = dockerfile_instructions()
    sources = []
    for keyword, args in instructions:
        if keyword in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    for source in sources:
        assert not Path(source).name.startswith(".env"), f"{source} would bake settings or secrets in"
        assert source not in (".", "./", "*"), "copying the whole context risks .env and .venv"
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"
    # What `pip install` needs: setup.cfg's long_description reads README.md.
    for needed in ("pyproject.toml", "setup.cfg", "README.md", "herald_smtp", "wsgi.py", "gunicorn.conf.py"):
        assert needed in sources, f"{needed} is not copied into the image"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"pip install --no-cache-dir", runs)


def test_dockerfile_bakes_no_secret():
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.I)
    instructions = dockerfile_instructions()
    env = dockerfile_env(instructions)
    args = [a.split("=", 1)[0].strip() for keyword, a in instructions if keyword == "ARG"]
    for name in list(env) + args:
        assert name not in SECRET_VARIABLES and not secretish.search(name), f"{name} set in the image"


def test_dockerfile_env_and_port_match_the_deployment(container, herald_service):
    instructions = dockerfile_instructions()
    env = dockerfile_env(final_stage(instructions))
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert set(env) - {"PYTHONDONTWRITEBYTECODE", "PIP_DISABLE_PIP_VERSION_CHECK"} <= APP_VARIABLES
    k8s_env = {item["name"]: item.get("value") for item in container.get("env", [])}
    assert env["PROMETHEUS_MULTIPROC_DIR"] == k8s_env["PROMETHEUS_MULTIPROC_DIR"]
    assert env["PROMETHEUS_MULTIPROC_DIR"] == compose_environment(herald_service)["PROMETHEUS_MULTIPROC_DIR"]
    exposed = [int(p.split("/")[0]) for keyword, args in instructions if keyword == "EXPOSE" for p in args.split()]
    assert exposed == [APP_PORT]
    assert settings_from(env).port == APP_PORT


def test_dockerignore_keeps_secrets_and_local_state_out():
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for required in (".env", ".venv", ".git", "var", ".pytest_cache"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    assert not any(p.startswith("!") and ".env" in p for p in patterns)


# --- docker-compose.yml --------------------------------------------------------------


def test_compose_has_its_services(compose):
    services = compose["services"]
    assert {"redis", "herald-smtp", "mailpit", "dovecot", "bounces"} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")
    assert services["mailpit"]["image"].startswith("axllent/mailpit")


def test_compose_builds_herald_from_the_dockerfile(herald_service):
    build = herald_service["build"]
    if isinstance(build, str):
        build = {"context": build}
    assert build["context"] in (".", "./")
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()


def test_compose_wires_herald_to_redis_and_mailpit(compose, herald_service):
    env = compose_environment(herald_service)
    settings = settings_from(env)  # the whole environment is valid for the app
    redis = urlsplit(settings.redis_url)
    assert redis.scheme == "redis" and redis.hostname == "redis" and (redis.port or 6379) == 6379
    assert redis.hostname in compose["services"]
    assert settings.smtp_host == "mailpit" and settings.smtp_host in compose["services"]
    assert settings.smtp_port == 1025  # Mailpit's SMTP port
    assert settings.smtp_configured
    # Mailpit offers neither STARTTLS nor implicit TLS.
    assert not settings.smtp_use_starttls and not settings.smtp_use_tls
    # More than one worker shares the Redis store.
    assert settings.workers() > 1
    assert settings.port == APP_PORT


def test_compose_sets_only_variables_the_app_reads(herald_service):
    unknown = set(compose_environment(herald_service)) - APP_VARIABLES
    assert not unknown, f"variables the app does not read: {sorted(unknown)}"


def test_compose_takes_secrets_from_the_shell_not_the_file(herald_service):
    raw = herald_service.get("environment", {})
    for name in ("API_KEY", "SMTP_PASSWORD"):
        if name in raw:
            assert str(raw[name]).startswith("${"), f"{name} is written into docker-compose.yml"
    assert "env_file" not in herald_service  # .env is for `make run`, with 127.0.0.1 addresses


def test_compose_publishes_the_api_and_the_mail_ui(compose, herald_service):
    assert compose_published(herald_service).get(APP_PORT) == APP_PORT
    assert compose_published(compose["services"]["mailpit"]).get(8025) == 8025


def test_compose_herald_waits_for_healthy_dependencies(herald_service):
    depends_on = herald_service["depends_on"]
    assert isinstance(depends_on, dict), "depends_on needs the long form to wait for health"
    for dependency in ("redis", "mailpit"):
        assert depends_on[dependency]["condition"] == "service_healthy"


def test_compose_every_service_has_a_healthcheck(compose, herald_service):
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test != ["NONE"] and not service["healthcheck"].get("disable"), name
    assert "/healthz" in " ".join(herald_service["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(compose["services"]["redis"]["healthcheck"]["test"])


def test_compose_stop_grace_period_covers_gunicorn_graceful_timeout(herald_service):
    # Docker's default is 10 s, then SIGKILL: in-flight sends would be cut.
    grace = duration_seconds(herald_service["stop_grace_period"])
    assert grace > graceful_timeout(compose_environment(herald_service))


# --- docker-compose.yml: the bounce reader and its local mailbox (deploy/dovecot/) ------------------------------


def dovecot_setting(conf: str, name: str) -> str:
    """A top-level (unindented) setting of dovecot.conf."""
    (value,) = re.findall(rf"^{name}[ \t]*=[ \t]*(.*?)[ \t]*$", conf, re.M)
    return value


def test_compose_dovecot_is_built_on_a_pinned_debian_with_dovecot_imapd(compose):
    dovecot = compose["services"]["dovecot"]
    build = dovecot["build"]
    assert (ROOT / build["context"]).resolve() == DOVECOT
    instructions = dockerfile_instructions(DOVECOT / build.get("dockerfile", "Dockerfile"))
    (base,) = [args for keyword, args in instructions if keyword == "FROM"]
    assert re.fullmatch(r"debian:\d+\.\d+-slim", base), f"{base}: pin a Debian point release"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "dovecot-imapd" in runs and "openssl" in runs  # openssl: the certificate made at start
    for keyword, args in instructions:
        if keyword == "COPY":
            for source in shlex.split(args)[:-1]:
                assert (DOVECOT / source).is_file(), source
    (entrypoint,) = [exec_form(args) for keyword, args in instructions if keyword == "ENTRYPOINT"]
    script = (DOVECOT / "entrypoint.sh").read_text()
    assert any(args.startswith("entrypoint.sh ") and args.endswith(entrypoint[0])
               for keyword, args in instructions if keyword == "COPY")
    # Dovecot as PID 1 in the foreground, so that `docker compose stop` reaches it.
    assert re.search(r"^exec /usr/sbin/dovecot -F\b", script, re.M)
    # Local only: nothing published on the host.
    assert "ports" not in dovecot


def test_compose_dovecot_offers_the_mailbox_over_tls_only():
    conf = (DOVECOT / "dovecot.conf").read_text()
    # The reader refuses plaintext IMAP: TLS on 993, STARTTLS on 143, no login before TLS.
    assert dovecot_setting(conf, "ssl") == "required"
    assert dovecot_setting(conf, "disable_plaintext_auth") == "yes"
    assert re.search(r"inet_listener imaps \{\s*port = 993\s*ssl = yes\s*\}", conf)
    assert re.search(r"inet_listener imap \{\s*port = 143\s*\}", conf)
    assert dovecot_setting(conf, "mail_location").startswith("maildir:")
    assert re.search(r"passdb \{\s*driver = passwd-file\s*args = /etc/dovecot/users\s*\}", conf)
    # entrypoint.sh writes the certificate and key that ssl_cert and ssl_key name.
    script = (DOVECOT / "entrypoint.sh").read_text()
    (tls_dir,) = re.findall(r"^tls=(\S+)$", script, re.M)
    script = script.replace("$tls", tls_dir)
    for setting in ("ssl_cert", "ssl_key"):
        path = dovecot_setting(conf, setting).lstrip("<").strip()
        assert f'"{path}"' in script, f"{setting} {path} is not made by entrypoint.sh"
    assert "openssl req -x509" in script


def test_compose_bounces_runs_the_reader_from_the_herald_image(herald_service, bounces_service):
    assert bounces_service["command"] == ["herald-smtp", "bounces"]
    assert bounces_service["image"] == herald_service["image"]
    assert bounces_service["build"] == herald_service["build"]


def test_compose_bounces_reads_dovecot_and_shares_the_store_of_herald(compose, herald_service, bounces_service):
    env = compose_environment(bounces_service)
    unknown = set(env) - APP_VARIABLES
    assert not unknown, f"variables the app does not read: {sorted(unknown)}"
    settings = settings_from(env)
    mailbox = settings.bounce_mailbox
    assert mailbox.host == "dovecot" and mailbox.host in compose["services"]
    assert mailbox.port == (993 if mailbox.implicit_tls else 143)  # dovecot.conf's listeners
    assert settings.bounce_reader_port == READER_PORT
    # The passwd-file user of deploy/dovecot/users, and the mailbox SMTP_BOUNCE_ADDRESS names.
    users = [line for line in (DOVECOT / "users").read_text().splitlines() if line and not line.startswith("#")]
    assert [line.split(":")[:2] for line in users] == [[mailbox.user, "{PLAIN}" + mailbox.password]]
    herald = settings_from(compose_environment(herald_service))
    assert herald.smtp_bounce_address.partition("@")[0] == mailbox.user
    # Self-signed certificate: local only, and said so next to the setting.
    assert settings.bounce_imap_tls_verify is False
    assert "LOCAL USE ONLY" in (ROOT / "docker-compose.yml").read_text().partition("\n  bounces:")[2]
    # The same store: the statuses the service shows, and the suppression keys (HMACs with IDEMPOTENCY_SECRET).
    raw_env, raw_herald = bounces_service["environment"], herald_service["environment"]
    for name in ("REDIS_URL", "REDIS_KEY_PREFIX", "IDEMPOTENCY_SECRET"):
        assert raw_env.get(name) == raw_herald.get(name), name
    assert "IDEMPOTENCY_SECRET" in raw_env and str(raw_env["IDEMPOTENCY_SECRET"]).startswith("${")
    assert settings.redis_url == herald.redis_url and settings.redis_key_prefix == herald.redis_key_prefix


def test_compose_bounces_waits_for_redis_and_dovecot(bounces_service):
    depends_on = bounces_service["depends_on"]
    assert isinstance(depends_on, dict), "depends_on needs the long form to wait for health"
    assert set(depends_on) == {"redis", "dovecot"}
    assert all(dependency["condition"] == "service_healthy" for dependency in depends_on.values())


def test_compose_bounces_publishes_its_port_and_outlasts_an_idle_slice(bounces_service):
    assert compose_published(bounces_service).get(READER_PORT) == READER_PORT
    assert duration_seconds(bounces_service["stop_grace_period"]) >= 2 * RENEW_SECONDS


# --- the healthcheck commands, run against the real app -------------------------------


@pytest.fixture(scope="module")
def live_app_port():
    from werkzeug.serving import make_server

    from herald_smtp.web.app import create_app

    server = make_server("127.0.0.1", 0, create_app(settings_from({})), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_healthcheck_command() -> list[str]:
    test = load_yaml(ROOT / "docker-compose.yml")["services"]["herald-smtp"]["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form expected"
    return test[1:]


@pytest.mark.parametrize("source", ["Dockerfile", "docker-compose.yml"])
def test_healthcheck_command_passes_on_a_live_app_and_fails_without_one(source, live_app_port):
    if source == "Dockerfile":
        command = healthcheck_command(dockerfile_instructions())
    else:
        command = compose_healthcheck_command()
    assert command[0] == "python"
    argv = [sys.executable, *command[1:]]
    for port_value in (f":{live_app_port}", str(live_app_port), f"127.0.0.1:{live_app_port}"):
        ok = subprocess.run(argv, env={"PORT": port_value}, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr.decode()
    down = subprocess.run(argv, env={"PORT": str(closed_port())}, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_compose_bounces_healthcheck_passes_on_a_live_reader_and_fails_without_one(tmp_path, redis_url,
                                                                                  bounces_service):
    test = bounces_service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", "exec form, with Python (no curl in the image)"
    argv = [sys.executable, *test[2:]]
    assert "/healthz" in " ".join(argv)
    # Unset, it asks the reader's default port.
    assert re.findall(r"BOUNCE_READER_PORT'\) or '(\d+)'", " ".join(argv)) == [str(READER_PORT)]
    reader = reader_process(tmp_path, compose_environment(bounces_service), bounces_service["command"], redis_url)
    with reader:
        ok = subprocess.run(argv, env={"BOUNCE_READER_PORT": str(reader.port)}, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr.decode()
    down = subprocess.run(argv, env={"BOUNCE_READER_PORT": str(closed_port())}, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_probe_and_scrape_paths_exist_on_the_app(deployment, container):
    from herald_smtp.web.app import create_app

    client = create_app(settings_from({})).test_client()
    assert client.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200
    assert client.get(container["startupProbe"]["httpGet"]["path"]).status_code == 200
    ready = client.get(container["readinessProbe"]["httpGet"]["path"])
    assert ready.status_code in (200, 503) and ready.is_json
    # No SMTP configured in this app: readiness must say not ready.
    assert ready.status_code == 503
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    scraped = client.get(annotations["prometheus.io/path"])
    assert scraped.status_code == 200 and scraped.mimetype == "text/plain"


# --- Kubernetes manifests --------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path, version):
    docs = load_all_yaml(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} invalid for Kubernetes {version} at {where}: {exc.message}")


def test_every_manifest_is_labelled_and_named_herald_smtp_or_its_bounce_reader():
    kinds: dict[str, set[str]] = {}
    for doc in manifests():
        name = doc["metadata"]["name"]
        kinds.setdefault(name, set()).add(doc["kind"])
        assert doc["metadata"]["labels"][NAME_LABEL] == name
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "herald"
        assert "namespace" not in doc["metadata"], "leave the namespace to kubectl -n / kustomize"
    assert kinds == {
        APP_NAME: {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                   "NetworkPolicy"},
        # The reader shares the service's ConfigMap and Secret; no Service (nothing calls it but Prometheus) and
        # no PodDisruptionBudget (one replica: see deploy/kubernetes/README.md).
        READER_NAME: {"Deployment", "NetworkPolicy"},
    }


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    expected = {p.name for p in manifest_files()} - {"secret.example.yaml"}
    assert set(resources) == expected
    assert "secret.example.yaml" not in resources  # applying it would overwrite real credentials


def test_deployment_replicas_strategy_and_selector(deployment, pod_labels):
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["selector"]["matchLabels"] == {NAME_LABEL: APP_NAME}
    assert matches(spec["selector"], pod_labels)


def test_deployment_probes(container):
    assert resolve_port(container, "http") == APP_PORT
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/healthz"  # never a check that depends on Redis or SMTP
    for probe in (readiness, liveness, container["startupProbe"]):
        assert resolve_port(container, probe["httpGet"]["port"]) == APP_PORT
    # A liveness probe that gives up before a busy worker answers would restart healthy pods.
    assert liveness.get("timeoutSeconds", 1) >= 2 and liveness.get("failureThreshold", 3) >= 3


def test_termination_grace_outlasts_prestop_and_gunicorn_graceful_timeout(pod_spec, container):
    configmap = one("ConfigMap")["data"]
    sleep = prestop_sleep_seconds(container)
    assert sleep >= 3, "endpoints need a few seconds to drop the pod before gunicorn stops listening"
    graceful = graceful_timeout(configmap)
    assert graceful >= 30
    assert pod_spec["terminationGracePeriodSeconds"] > sleep + graceful


def test_pod_runs_non_root_read_only_and_unprivileged(each_deployment):
    pod_spec, container = each_deployment["spec"]["template"]["spec"], only_container(each_deployment)
    pod_sc, sc = pod_spec.get("securityContext", {}), container["securityContext"]

    def effective(key):
        return sc.get(key, pod_sc.get(key))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert not sc.get("privileged", False)
    assert "ALL" in sc["capabilities"]["drop"] and not sc["capabilities"].get("add")
    assert effective("seccompProfile")["type"] == "RuntimeDefault"
    assert pod_spec["automountServiceAccountToken"] is False


def test_writable_paths_are_emptydirs(each_deployment):
    # The service's workers write their metrics under PROMETHEUS_MULTIPROC_DIR; the reader, one process, keeps
    # them in memory (the command drops the image's variable) and needs only /tmp.
    pod_spec, container = each_deployment["spec"]["template"]["spec"], only_container(each_deployment)
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR")
    assert (metrics_dir is None) == (container.get("command", [None])[-1] == "bounces")
    for path in filter(None, (metrics_dir, "/tmp")):
        assert path in mounts, f"{path} is not mounted: the root filesystem is read-only"
        mount = mounts[path]
        assert not mount.get("readOnly", False)
        assert "emptyDir" in volumes[mount["name"]], f"{path} should be an emptyDir"
    if metrics_dir:
        assert mounts[metrics_dir]["name"] != mounts["/tmp"]["name"]


def test_resources_have_requests_and_limits(each_deployment):
    resources = only_container(each_deployment)["resources"]
    for resource in ("cpu", "memory"):
        request = quantity(resources["requests"][resource])
        limit = quantity(resources["limits"][resource])
        assert 0 < request <= limit, resource
    assert quantity(resources["limits"]["memory"]) >= 256 * 2**20


def test_environment_comes_from_the_configmap_and_secret(each_deployment):
    pod_spec, container = each_deployment["spec"]["template"]["spec"], only_container(each_deployment)
    refs = container["envFrom"]
    assert [r["configMapRef"]["name"] for r in refs if "configMapRef" in r] == [one("ConfigMap")["metadata"]["name"]]
    assert [r["secretRef"]["name"] for r in refs if "secretRef" in r] == [one("Secret")["metadata"]["name"]]
    # The Secret comes after the ConfigMap, so a REDIS_URL with a password there wins.
    assert "configMapRef" in refs[0] and "secretRef" in refs[-1]
    for item in container.get("env", []):
        assert item["name"] in APP_VARIABLES, item["name"]
        assert item["name"] not in SECRET_VARIABLES or "valueFrom" in item
    # Service links would inject e.g. SMTP_PORT=tcp://... for a Service named smtp.
    assert pod_spec["enableServiceLinks"] is False


def test_prometheus_scrape_annotations(each_deployment):
    annotations = each_deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    (port,) = only_container(each_deployment)["ports"]  # the one port: the app's (8084) or the reader's (8086)
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_routes_port_80_to_the_pods_http_port(container, pod_labels):
    spec = one("Service")["spec"]
    assert spec.get("type", "ClusterIP") == "ClusterIP"
    assert matches(spec["selector"], pod_labels)
    (port,) = spec["ports"]
    assert port["name"] == "http" and port["port"] == 80
    assert resolve_port(container, port["targetPort"]) == APP_PORT


def test_pdb_selects_the_pods_and_lets_one_go(deployment, pod_labels):
    spec = one("PodDisruptionBudget")["spec"]
    assert matches(spec["selector"], pod_labels)
    replicas = deployment["spec"]["replicas"]
    if "maxUnavailable" in spec:
        allowed_down = spec["maxUnavailable"]
    else:
        allowed_down = replicas - spec["minAvailable"]
    assert isinstance(allowed_down, int) and 1 <= allowed_down < replicas


def test_example_secret_holds_only_placeholders():
    secret = one("Secret")
    assert "data" not in secret, "use stringData with placeholders, not base64 data"
    values = secret["stringData"]
    assert {"API_KEY", "SMTP_PASSWORD"} <= set(values)
    assert set(values) <= APP_VARIABLES
    for name, value in values.items():
        assert PLACEHOLDER in str(value), f"{name} holds something other than a placeholder"


def test_configmap_holds_valid_non_secret_settings():
    configmap = one("ConfigMap")["data"]
    unknown = set(configmap) - APP_VARIABLES
    assert not unknown, f"variables the app does not read: {sorted(unknown)}"
    assert all(isinstance(v, str) for v in configmap.values()), "ConfigMap values must be strings"
    assert not ALWAYS_SECRET & set(configmap), "secrets belong in the Secret"
    assert urlsplit(configmap["REDIS_URL"]).password is None, "a REDIS_URL with a password belongs in the Secret"
    # ConfigMap + Secret is what the pod sees: the app must accept it (it exits on a bad value).
    settings = settings_from({**configmap, **one("Secret")["stringData"]})
    assert settings.port == APP_PORT
    assert settings.redis_url and settings.smtp_configured
    # Without WEB_CONCURRENCY gunicorn would start 2 x (node CPUs) + 1 workers per pod.
    assert "WEB_CONCURRENCY" in configmap and settings.workers() == int(configmap["WEB_CONCURRENCY"])


# --- scale and isolation: HorizontalPodAutoscaler, NetworkPolicy ----------------------


def test_autoscaler_scales_the_deployment_on_cpu_from_three(deployment, container):
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP_NAME}
    assert spec["minReplicas"] == 3 == deployment["spec"]["replicas"]
    assert spec["maxReplicas"] > spec["minReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    # Utilization is measured against the CPU request: without one the autoscaler cannot act.
    assert quantity(container["resources"]["requests"]["cpu"]) > 0
    # The PodDisruptionBudget's one-down still leaves two pods serving at the minimum.
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_network_policy_lets_only_herald_and_prometheus_in_on_the_http_port(pod_labels, container):
    policy = one("NetworkPolicy")["spec"]
    assert matches(policy["podSelector"], pod_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = policy["ingress"]
    assert [resolve_port(container, p["port"]) for p in rule["ports"]] == [APP_PORT]
    assert all(p["protocol"] == "TCP" for p in rule["ports"])
    peers = rule["from"]
    assert len(peers) == 2 and all("ipBlock" not in peer for peer in peers)
    herald, prometheus = peers
    assert herald == {"podSelector": {"matchLabels": {NAME_LABEL: "herald"}}}  # same namespace only
    assert prometheus["podSelector"]["matchLabels"] == {NAME_LABEL: "prometheus"}
    assert prometheus["namespaceSelector"]["matchLabels"]  # one namespace, not every namespace


def test_network_policy_lets_out_only_dns_redis_and_smtp():
    policy = one("NetworkPolicy")["spec"]
    allowed = set()
    for rule in policy["egress"]:
        assert rule.get("ports"), "an egress rule without ports would open every port"
        allowed |= {(p["port"], p["protocol"]) for p in rule["ports"]}
    assert allowed == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (26379, "TCP"), (587, "TCP"), (465, "TCP"),
                       (25, "TCP")}
    configmap = one("ConfigMap")["data"]
    assert int(configmap["SMTP_PORT"]) in {port for port, _ in allowed}
    assert (urlsplit(configmap["REDIS_URL"]).port or 6379) in {port for port, _ in allowed}


# --- the bounce reader: deploy/kubernetes/bounces-deployment.yaml, bounces-networkpolicy.yaml ---------------


def pod_environment(deployment: dict) -> dict[str, str]:
    """What the pod's process sees: the ConfigMap, then the example Secret (envFrom), then `env`."""
    env: dict[str, str] = {}
    for ref in only_container(deployment)["envFrom"]:
        if "configMapRef" in ref:
            env.update(one("ConfigMap", ref["configMapRef"]["name"])["data"])
        else:
            env.update(one("Secret", ref["secretRef"]["name"])["stringData"])
    env.update({item["name"]: item["value"] for item in only_container(deployment).get("env", [])})
    return env


def console_script(name: str) -> str:
    """setup.cfg's entry point for a console script, e.g. herald_smtp.tools.cli:main."""
    scripts = (ROOT / "setup.cfg").read_text().partition("console_scripts =")[2]
    (target,) = re.findall(rf"^\s+{re.escape(name)}\s*=\s*(\S+)", scripts, re.M)
    return target


def get_answer(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, 4xx and 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read()


def reader_process(tmp_path: Path, env: dict[str, str], command: list[str], redis_url: str) -> HeraldProcess:
    """The real `herald-smtp bounces` (the container's command, run as `python -m herald_smtp.tools.cli ...`) with
    `env`, but on the test Redis, a loopback port and an IMAP port where nothing listens (the mailbox fails, so the
    reader is not ready: its /readyz must say so)."""
    assert command[0] == "herald-smtp" and console_script("herald-smtp") == "herald_smtp.tools.cli:main"
    mailbox = settings_from(env).bounce_mailbox
    assert mailbox is not None, "the reader's environment has no BOUNCE_IMAP_URL"
    scheme = "imaps" if mailbox.implicit_tls else "imap"
    assert tuple(command[1:]) == BOUNCES[1:]
    process = bounce_reader(tmp_path, {
        **env,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"deploy-test-{tmp_path.name}:",  # a lock of its own
        "BOUNCE_IMAP_URL": f"{scheme}://bounces:s3cret-pw@{LOCALHOST}:{free_port()}/INBOX",
    })
    return process


def test_reader_is_one_replica_recreated(reader_deployment, reader_pod_labels):
    spec = reader_deployment["spec"]
    # One reader reads (a Redis lock); a rolling update would wait forever for a new pod that cannot take the
    # lock while the old one holds it: Recreate stops the old one (SIGTERM frees the lock) first.
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"] == {NAME_LABEL: READER_NAME}
    assert matches(spec["selector"], reader_pod_labels)


def test_nothing_of_the_service_selects_the_readers_pod_nor_the_reverse(deployment, pod_labels, reader_deployment,
                                                                       reader_pod_labels):
    # Else the Service would route /v1/send to the reader, the service's Deployment would adopt its pod, and the
    # PodDisruptionBudget and NetworkPolicy would count or filter it as a service pod.
    for selector in (deployment["spec"]["selector"], one("Service")["spec"]["selector"],
                     one("PodDisruptionBudget")["spec"]["selector"], one("NetworkPolicy")["spec"]["podSelector"]):
        assert not matches(selector, reader_pod_labels), selector
    for selector in (reader_deployment["spec"]["selector"], one("NetworkPolicy", READER_NAME)["spec"]["podSelector"]):
        assert not matches(selector, pod_labels), selector


def test_no_disruption_budget_or_autoscaler_for_the_reader(reader_pod_labels):
    # One replica: a budget of maxUnavailable 0 would block every node drain; 1 says nothing. The autoscaler
    # would start readers that only wait for the lock.
    budgets = [doc for doc in manifests() if doc["kind"] == "PodDisruptionBudget"]
    assert budgets and not any(matches(doc["spec"]["selector"], reader_pod_labels) for doc in budgets)
    autoscalers = [doc for doc in manifests() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert autoscalers and all(doc["spec"]["scaleTargetRef"]["name"] != READER_NAME for doc in autoscalers)


def test_reader_runs_the_bounces_command_of_the_service_image(deployment, container, reader_deployment,
                                                              reader_container):
    assert reader_container["command"] == ["herald-smtp", "bounces"]
    assert "args" not in reader_container
    assert console_script("herald-smtp") == "herald_smtp.tools.cli:main"
    # `kustomize edit set image herald-smtp=...` then moves both together.
    assert reader_container["image"] == container["image"]
    assert reader_container["imagePullPolicy"] == container["imagePullPolicy"]
    assert reader_container["securityContext"] == container["securityContext"]
    pod_spec, reader_pod_spec = deployment["spec"]["template"]["spec"], reader_deployment["spec"]["template"]["spec"]
    for key in ("securityContext", "automountServiceAccountToken", "enableServiceLinks"):
        assert reader_pod_spec[key] == pod_spec[key], key


def test_reader_port_is_bounce_reader_port(reader_deployment, reader_container):
    (port,) = reader_container["ports"]
    assert port["name"] == "bounce-http" and port["protocol"] == "TCP"
    # What the reader listens on in this pod (BOUNCE_READER_PORT from the ConfigMap, else the default).
    assert port["containerPort"] == settings_from(pod_environment(reader_deployment)).bounce_reader_port == READER_PORT
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert resolve_port(reader_container, reader_container[probe]["httpGet"]["port"]) == READER_PORT, probe
    annotations = reader_deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == READER_PORT


def test_reader_probes(reader_container):
    liveness, readiness = reader_container["livenessProbe"], reader_container["readinessProbe"]
    # Liveness never depends on IMAP or Redis: a mailbox outage must not restart the reader, it retries.
    assert liveness["httpGet"]["path"] == reader_container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness.get("timeoutSeconds", 1) >= 2 and liveness.get("failureThreshold", 3) >= 3


def test_reader_probes_and_scrape_answer_on_a_real_reader(tmp_path, redis_url, reader_deployment, reader_container):
    """The pod's own environment and command, started for real: the probes' and the scrape's paths answer as the
    kubelet and Prometheus expect, and SIGTERM ends it well within the grace period."""
    metrics_dir = tmp_path / "metrics"  # where the image's PROMETHEUS_MULTIPROC_DIR points
    metrics_dir.mkdir()
    env = {**pod_environment(reader_deployment), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    reader = reader_process(tmp_path, env, reader_container["command"], redis_url).start()
    try:
        for probe in ("startupProbe", "livenessProbe"):
            status, _, _ = get_answer(reader.url + reader_container[probe]["httpGet"]["path"])
            assert status == 200, probe
        readyz = reader.url + reader_container["readinessProbe"]["httpGet"]["path"]
        status, content_type, body = wait_for(
            lambda: (lambda got: got if json.loads(got[2]).get("state") == "failing" else None)(get_answer(readyz)))
        assert status == 503 and content_type == "application/json"
        assert "cannot open the bounce mailbox" in json.loads(body)["problem"]
        annotations = reader_deployment["spec"]["template"]["metadata"]["annotations"]
        status, content_type, body = get_answer(reader.url + annotations["prometheus.io/path"])
        assert status == 200 and content_type == "text/plain"
        assert "herald_smtp_bounce_reader_ready 0.0" in body.decode()
        # One process with its own registry: no value files, which a restarted container would read back.
        assert not any(metrics_dir.iterdir()), "the reader wrote multiprocess value files"
    finally:
        started = time.monotonic()
        code = reader.stop()
    assert code == 0
    grace = reader_deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert time.monotonic() - started < grace


def test_reader_grace_period_outlasts_an_idle_slice(reader_deployment, reader_container):
    # SIGTERM is seen between IMAP IDLE slices (RENEW_SECONDS) and after the mail in hand.
    grace = reader_deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 30 and grace >= 2 * RENEW_SECONDS
    assert "lifecycle" not in reader_container  # no preStop sleep: nothing routes requests to the reader


def test_reader_environment_names_only_known_variables(reader_deployment, reader_container):
    for item in reader_container.get("env", []):
        assert item["name"] in _VARIABLES, item["name"]
    configmap = one("ConfigMap")["data"]
    bounce_settings = {name for name in configmap if name.startswith("BOUNCE_")}
    assert bounce_settings and bounce_settings <= set(_VARIABLES)
    settings = settings_from(pod_environment(reader_deployment))  # the app accepts what the pod sees
    assert settings.bounce_mailbox is not None and settings.redis_target is not None
    assert settings.bounce_imap_tls_verify, "the example must verify the IMAP server's certificate"


def test_reader_shares_the_services_store_settings(container, reader_container):
    # The same REDIS_URL and REDIS_KEY_PREFIX (the statuses and the lock), and IDEMPOTENCY_SECRET (the suppression
    # keys are HMACs with it): from the same ConfigMap and Secret, in the same order, overridden by neither.
    assert reader_container["envFrom"] == container["envFrom"]
    shared = {"REDIS_URL", "REDIS_KEY_PREFIX", "IDEMPOTENCY_SECRET"}
    for c in (container, reader_container):
        assert not shared & {item["name"] for item in c.get("env", [])}
    assert "IDEMPOTENCY_SECRET" in one("Secret")["stringData"]


def test_bounce_imap_url_comes_only_from_the_secret(deployment, reader_deployment):
    # It holds the IMAP password.
    assert "BOUNCE_IMAP_URL" in SECRET_VARIABLES
    assert "BOUNCE_IMAP_URL" not in one("ConfigMap")["data"]
    for d in (deployment, reader_deployment):
        assert "BOUNCE_IMAP_URL" not in {item["name"] for item in only_container(d).get("env", [])}
    assert [r["secretRef"]["name"] for r in only_container(reader_deployment)["envFrom"] if "secretRef" in r] \
        == [one("Secret")["metadata"]["name"]]
    example = one("Secret")["stringData"]["BOUNCE_IMAP_URL"]
    mailbox = settings_from({"BOUNCE_IMAP_URL": example}).bounce_mailbox
    assert mailbox.password == PLACEHOLDER


def test_reader_network_policy_lets_in_only_prometheus_and_out_only_dns_redis_and_imap(reader_pod_labels,
                                                                                      reader_deployment,
                                                                                      reader_container):
    policy = one("NetworkPolicy", READER_NAME)["spec"]
    assert matches(policy["podSelector"], reader_pod_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = policy["ingress"]
    assert [resolve_port(reader_container, p["port"]) for p in rule["ports"]] == [READER_PORT]
    (prometheus,) = rule["from"]
    assert prometheus["podSelector"]["matchLabels"] == {NAME_LABEL: "prometheus"}
    assert prometheus["namespaceSelector"]["matchLabels"]  # one namespace, not every namespace
    allowed = set()
    for egress in policy["egress"]:
        assert egress.get("ports"), "an egress rule without ports would open every port"
        allowed |= {(p["port"], p["protocol"]) for p in egress["ports"]}
    assert allowed == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (26379, "TCP"), (993, "TCP"), (143, "TCP")}
    settings = settings_from(pod_environment(reader_deployment))
    assert (settings.bounce_mailbox.port, "TCP") in allowed
    assert (urlsplit(settings.redis_url).port or 6379, "TCP") in allowed
