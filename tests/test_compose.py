"""docker/docker-compose.yaml agrees with the topology tests/test_prod.py runs (devstack/prod.py):
the same services, queues, images and settings, as tests/test_docker.py does for pins."""

from __future__ import annotations

import re
import shlex
import sys

import pytest
import yaml

from devstack.prod import (AUTH_MANAGER, METRICS_PREFIX, QUEUES, RECOVERY_SETTINGS, REMOTE_LOGGING_SETTINGS,
                           SCORING_SLOTS, TRIGGERERS)

from .helpers import REPO

COMPOSE = REPO / "docker" / "docker-compose.yaml"
AIRFLOW_PARTS = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                 "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_of(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def test_services_are_the_tested_topology(compose):
    services = compose["services"]
    workers = {f"airflow-worker-{queue}" for queue in QUEUES}
    assert set(services) == {"postgres", "redis", "airflow-init"} | set(AIRFLOW_PARTS) | workers
    for name, command in AIRFLOW_PARTS.items():
        assert services[name]["command"] == command
    assert services["airflow-triggerer"]["deploy"]["replicas"] == TRIGGERERS
    assert services["postgres"]["image"] == "postgres:15"  # Debian's postgresql, as tested
    assert services["redis"]["image"] == "redis:7.0"  # Debian's redis-server, as tested
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"


def test_each_queue_has_a_worker_from_the_image_the_tests_ran_it_from(compose):
    """The worker of a queue is built from the folder whose requirements built its venv."""
    makefile = (REPO / "Makefile").read_text()
    for name, value in re.findall(r"^(\w+) := (\S+)$", makefile, re.MULTILINE):
        makefile = makefile.replace(f"$({name})", value)
    for queue, (venv, image, concurrency) in QUEUES.items():
        service = compose["services"][f"airflow-worker-{queue}"]
        args = shlex.split(service["command"])
        assert args[:2] == ["celery", "worker"]
        assert args[args.index("--queues") + 1] == queue
        assert int(args[args.index("--concurrency") + 1]) == concurrency
        assert service["build"]["dockerfile"] == f"docker/{image}/Dockerfile"
        assert f"$(UV_INSTALL) {venv.name}/bin/python -r docker/{image}/requirements.txt" in makefile
        assert f"docker/{image}/requirements.txt" in (REPO / "docker" / image / "Dockerfile").read_text()
        volumes = [v.split(":")[1] for v in service["volumes"]]
        assert "/opt/airflow/scratch" in volumes  # a scratch folder of its own, as in the tests


def test_settings_are_the_tested_ones(compose):
    services = compose["services"]
    for name in [*AIRFLOW_PARTS, *(f"airflow-worker-{q}" for q in QUEUES), "airflow-init"]:
        env = env_of(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "default"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGER  # the one the production tests sign in to
        for key, value in RECOVERY_SETTINGS.items() | REMOTE_LOGGING_SETTINGS.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)}, the tests run {value}"
        assert env["AIRFLOW__METRICS__STATSD_ON"] == "True" and env["AIRFLOW__METRICS__STATSD_PREFIX"] == METRICS_PREFIX
        for conn in ("AIRFLOW_CONN_WASB_DATA", "AIRFLOW_CONN_WASB_SYSTEM", "AIRFLOW__SECRETS__BACKEND"):
            assert conn in env, f"{name} takes no {conn} from the environment"


def test_init_runs_the_deployments_own_initialisation(compose):
    """The module devstack runs too (tests/test_prod.py checks what it makes and keeps), with
    the plugins on the path and the first admin from the environment."""
    init = compose["services"]["airflow-init"]
    assert init["command"][-1] == "exec python -m deployment init"  # the default pool size: SCORING_SLOTS
    env = env_of(init)
    assert env["PYTHONPATH"].split(":")[0] == "/opt/airflow/plugins"
    assert {"AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_EMAIL", "AIRFLOW_ADMIN_PASSWORD"} <= set(env)
    sys.path.insert(0, str(REPO / "plugins"))
    import deployment

    assert deployment.SCORING_SLOTS == SCORING_SLOTS


def test_every_variable_the_compose_file_uses_is_in_the_example_env():
    """`cp docker/compose.env.example docker/.env` gives a team every variable to fill in."""
    text = (REPO / "docker" / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text))
    example = {line.split("=", 1)[0] for line in (REPO / "docker" / "compose.env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used and used <= example, sorted(used - example)


@pytest.mark.parametrize("venv, packages", [(".venv", ["airflow", "torch"]), (".venv-airflow", ["airflow"]),
                                            (".venv-scoring", ["airflow", "torch"])])
def test_venvs_hold_compiled_byte_code(venv, packages):
    """Each Airflow task and scoring process imports Airflow or torch: from source, where
    PYTHONDONTWRITEBYTECODE keeps Python from caching what it compiled, that is seconds of CPU
    per process. make compiles the venvs when it fills them."""
    site = REPO / venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not site.exists():
        pytest.skip(f"{venv} is not built (make prod-setup builds it)")
    for package in packages:
        assert list((site / package / "__pycache__").glob("__init__.cpython-*.pyc")), f"{venv}: {package} not compiled"
