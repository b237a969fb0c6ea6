"""Deployment files: Dockerfile, .dockerignore, docker-compose.yml, deploy/kubernetes/.

There is no container engine or cluster here, so everything is checked offline:
the compose file and the manifests are parsed with PyYAML, the manifests are
validated against the Kubernetes JSON schemas that `kubernetes-validate` ships,
and the rules that tie them to the app (paths, ports, variable names, timeouts,
the metrics directory) are checked against the app's own code. The healthcheck
commands of the Dockerfile and the compose file are run against the real app.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from herald_smtp.config import _VARIABLES, settings_from
from herald_smtp.tools.serve import gunicorn_options

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
NAME_LABEL = "app.kubernetes.io/name"
APP_NAME = "herald-smtp"
APP_PORT = 8084
# Every variable the service reads (config/loading.py's table, plus the ones read elsewhere).
APP_VARIABLES = set(_VARIABLES) | {"PORT", "WEB_THREADS", "PROMETHEUS_MULTIPROC_DIR", "PYTHONUNBUFFERED"}
SECRET_VARIABLES = {"API_KEY", "SMTP_USER", "SMTP_PASSWORD", "REDIS_URL", "SMTP_FALLBACK_URLS"}
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


# Custom resources: no Kubernetes JSON schema knows their kind, and they are applied on their
# own; tests/test_alerts.py checks the PrometheusRule.
CUSTOM_RESOURCE_FILES = {"prometheusrule.yaml"}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in {"kustomization.yaml", *CUSTOM_RESOURCE_FILES})


def manifests() -> list[dict]:
    return [doc for path in manifest_files() for doc in load_all_yaml(path)]


def one(kind: str) -> dict:
    found = [doc for doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


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


def test_compose_has_the_three_services(compose):
    services = compose["services"]
    assert {"redis", "herald-smtp", "mailpit"} <= set(services)
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


def test_every_manifest_is_labelled_and_named_herald_smtp():
    kinds = set()
    for doc in manifests():
        kinds.add(doc["kind"])
        assert doc["metadata"]["name"] == APP_NAME
        assert doc["metadata"]["labels"][NAME_LABEL] == APP_NAME
        assert "namespace" not in doc["metadata"], "leave the namespace to kubectl -n / kustomize"
    assert kinds == {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                     "NetworkPolicy"}


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


def test_pod_runs_non_root_read_only_and_unprivileged(pod_spec, container):
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


def test_writable_paths_are_emptydirs(pod_spec, container):
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {item["name"]: item.get("value") for item in container["env"]}
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
    for path in (metrics_dir, "/tmp"):
        assert path in mounts, f"{path} is not mounted: the root filesystem is read-only"
        mount = mounts[path]
        assert not mount.get("readOnly", False)
        assert "emptyDir" in volumes[mount["name"]], f"{path} should be an emptyDir"
    assert mounts[metrics_dir]["name"] != mounts["/tmp"]["name"]


def test_resources_have_requests_and_limits(container):
    resources = container["resources"]
    for resource in ("cpu", "memory"):
        request = quantity(resources["requests"][resource])
        limit = quantity(resources["limits"][resource])
        assert 0 < request <= limit, resource
    assert quantity(resources["limits"]["memory"]) >= 256 * 2**20


def test_environment_comes_from_the_configmap_and_secret(pod_spec, container):
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


def test_prometheus_scrape_annotations(deployment, container):
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == resolve_port(container, "http")
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
    assert not {"API_KEY", "SMTP_USER", "SMTP_PASSWORD"} & set(configmap)
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
