"""Deployment files agree with the service: ports, probe paths, variable names, selectors."""

from __future__ import annotations

from pathlib import Path

import yaml

from utils.config import PROJECT_ROOT, Settings

DEPLOY = PROJECT_ROOT / "deploy"
SERVICE_PORT = 3000  # bentoml serve's default, used by the image's entrypoint
KNOWN_ROUTES = {"/readyz", "/livez", "/metrics"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _docs(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _setting_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def _known_variable(name: str) -> bool:
    return name in _setting_names() or name.startswith("BENTOML_")


def test_configmap_and_compose_use_real_setting_names() -> None:
    objects = _k8s()
    config = objects[("ConfigMap", "rf-localization-config")]["data"]
    unknown = [k for k in config if not _known_variable(k)]
    assert not unknown, unknown
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    env = compose["services"]["localization"]["environment"]
    assert not [k for k in env if not _known_variable(k)]
    Settings(
        _env_file=None,
        **{k.lower(): v for k, v in config.items() if k.lower() in Settings.model_fields},
    )  # values validate
    assert config["REDIS_URL"].startswith("redis://rf-localization-redis:")
    assert env["REDIS_URL"].startswith("redis://redis:")


def test_deployment_probes_ports_and_scrape_annotations() -> None:
    objects = _k8s()
    deployment = objects[("Deployment", "rf-localization")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": SERVICE_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in KNOWN_ROUTES
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == SERVICE_PORT
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["envFrom"][0]["configMapRef"]["name"] == "rf-localization-config"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # a new model is a new image, rolled with no pod down until its replacement is ready
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    # the image carries one model: the reload route stays disabled (no token in plain config)
    assert "ADMIN_TOKEN" not in objects[("ConfigMap", "rf-localization-config")]["data"]
    workers = int(objects[("ConfigMap", "rf-localization-config")]["data"]["SERVICE_WORKERS"])
    assert workers == int(container["resources"]["limits"]["cpu"])  # one worker per core


def test_service_and_hpa_point_at_the_deployment() -> None:
    objects = _k8s()
    deployment = objects[("Deployment", "rf-localization")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "rf-localization")]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = objects[("HorizontalPodAutoscaler", "rf-localization")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "rf-localization")
    assert hpa["spec"]["minReplicas"] >= 2
    redis_service = objects[("Service", "rf-localization-redis")]
    assert redis_service["spec"]["ports"][0]["port"] == 6379


def test_compose_wires_the_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["localization"]["ports"] == [f"{SERVICE_PORT}:{SERVICE_PORT}"]
    assert "redis" in services["localization"]["depends_on"]
    assert "/readyz" in " ".join(services["localization"]["healthcheck"]["test"])
    assert services["mlflow"]["profiles"] == ["registry"]  # import/build time only


def _set_by_deploy_files() -> dict[str, dict[str, str]]:
    """Every Settings variable each deployment file sets, with its value as text."""
    objects = _k8s()
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    bentofile = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    found = {
        "configmap": objects[("ConfigMap", "rf-localization-config")]["data"],
        "compose": compose["services"]["localization"]["environment"],
        "bentofile": {e["name"]: e["value"] for e in bentofile.get("envs", [])},
    }
    return {
        where: {k: str(v) for k, v in env.items() if k.lower() in Settings.model_fields}
        for where, env in found.items()
    }


def test_deployment_files_set_only_what_differs_from_the_defaults() -> None:
    """utils/config.py is the one source of defaults: a file restating one would keep it after
    the default changes (it did: BATCH_MAX_LATENCY_MS)."""
    defaults = Settings(_env_file=None)
    for where, env in _set_by_deploy_files().items():
        for name, value in env.items():
            field = name.lower()
            given = getattr(Settings(_env_file=None, **{field: value}), field)
            assert given != getattr(defaults, field), f"{where} restates the default {name}"


def test_pods_run_unprivileged_on_a_read_only_root() -> None:
    """What `make container-test` runs the image with (its read-only run): `--read-only`,
    `--cap-drop ALL`, `no-new-privileges`, a writable /tmp and BENTOML_HOME there."""
    objects = _k8s()
    pod = objects[("Deployment", "rf-localization")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/tmp"} and "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BENTOML_HOME"].startswith("/tmp/")


def test_a_disruption_budget_and_redis_open_to_the_service_only() -> None:
    objects = _k8s()
    labels = objects[("Deployment", "rf-localization")]["spec"]["template"]["metadata"]["labels"]
    pdb = objects[("PodDisruptionBudget", "rf-localization")]["spec"]
    assert pdb["minAvailable"] >= 1
    assert all(labels.get(k) == v for k, v in pdb["selector"]["matchLabels"].items())
    policy = objects[("NetworkPolicy", "rf-localization-redis")]["spec"]
    redis = objects[("Deployment", "rf-localization-redis")]["spec"]["template"]["metadata"]
    assert policy["podSelector"]["matchLabels"] == redis["labels"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source == {"podSelector": {"matchLabels": labels}}
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_every_manifest_passes_strict_kubernetes_schemas() -> None:
    """Offline, against the schemas of Kubernetes 1.33 (kubernetes-validate bundles them)."""
    import kubernetes_validate

    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _docs(path):
            kubernetes_validate.validate(doc, "1.33.0", strict=True)  # raises on any error
