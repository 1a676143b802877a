"""The deployment files in deploy/: their shape and their agreement with each other and with the
Kubernetes schemas (offline, from the kubernetes-validate package). What needs a process (the
gateway's commands, the registry, nginx -t, deploy/render.sh, git): tests/realworld/test_deploy_files.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from kubernetes_validate import utils as kubernetes_validate

from tests.support.deploy import (
    DEPLOY,
    KUBERNETES,
    REPLICAS,
    compose_file,
    interpolate,
    kubernetes_manifests,
    kustomization_file,
    registry_config_file,
)

# The oldest and newest Kubernetes versions whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_file()


@pytest.fixture(scope="module")
def registry_config() -> dict[str, Any]:
    return registry_config_file()


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return kustomization_file()


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return kubernetes_manifests(kustomization)


# -- compose.yaml ---------------------------------------------------------------------------


def test_compose_services_ports_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"keys", *REPLICAS, "registry", "nginx"}
    assert services["registry"]["image"] == "registry:2.8"
    for name in ("keys", *REPLICAS):
        # One image, built from the repository's Dockerfile, for the key step and every replica.
        assert services[name]["image"] == "registry-gateway:local"
        assert services[name]["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert "gateway-keys:/data/keys" in services[name]["volumes"]
    assert (DEPLOY / services["keys"]["build"]["context"] / "Dockerfile").is_file()

    # Only nginx (TLS) and the registry are published; the replicas are reached through nginx.
    assert services["nginx"]["ports"] == ["8443:8443"]
    assert services["registry"]["ports"] == ["5000:5000"]
    for name in (*REPLICAS, "keys"):
        assert "ports" not in services[name]
    assert services[REPLICAS[0]] == {**services[REPLICAS[1]], "hostname": REPLICAS[0]}

    # Every named volume is declared; bind mounts point at files that exist.
    declared = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = interpolate(volume, {}).split(":")[0]
            if source.startswith(("./", "../")) or source == "..":
                assert (DEPLOY / source).exists(), f"{name}: {volume}"
            else:
                assert source in declared, f"{name}: undeclared volume {source}"

    # Start order: the key step first; nginx once both replicas are healthy.
    for name in (*REPLICAS, "registry"):
        assert services[name]["depends_on"]["keys"] == {
            "condition": "service_completed_successfully"
        }
    assert services["nginx"]["depends_on"] == {
        r: {"condition": "service_healthy"} for r in REPLICAS
    }
    for name in REPLICAS:
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])


def test_compose_shares_the_keys_and_the_bundle_path(
    compose: dict[str, Any], registry_config: dict[str, Any]
) -> None:
    services = compose["services"]
    keys_step = "\n".join(services["keys"]["command"])
    written = re.search(r"keys bundle --data-dir /data -o (\S+)", keys_step)
    assert written, keys_step
    # The registry reads the bundle where the key step wrote it: the same volume.
    bundle_volume = next(v for v in services["keys"]["volumes"] if v.startswith("registry-auth:"))
    keys_mount = bundle_volume.split(":")[1]
    registry_mount = next(
        v for v in services["registry"]["volumes"] if v.startswith("registry-auth:")
    )
    assert registry_mount.endswith(":ro")
    in_registry = written.group(1).replace(keys_mount, registry_mount.split(":")[1])
    assert registry_config["auth"]["token"]["rootcertbundle"] == in_registry


# -- nginx.conf -----------------------------------------------------------------------------


def test_nginx_conf_balances_every_replica_and_retries(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    upstream = re.search(r"upstream gateway \{(.*?)\}", text, re.S)
    assert upstream
    servers = re.findall(r"^\s*server (\S+)", upstream.group(1), re.M)
    assert servers == [f"{r}:5001" for r in REPLICAS]
    assert "keepalive" in upstream.group(1)
    assert re.search(r"proxy_next_upstream error timeout http_502 http_503;", text)
    assert re.search(r"location = /auth/token \{[^}]*proxy_pass http://gateway;", text)
    assert re.search(r"location / \{[^}]*proxy_pass http://gateway;", text)
    assert "proxy_set_header X-Request-ID" in text
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text
    assert "location = /-/lb-health" in text
    assert "/-/lb-health" in " ".join(compose["services"]["nginx"]["healthcheck"]["test"])
    # The certificates are read from the mounted deploy/nginx/certs directory.
    mounts = compose["services"]["nginx"]["volumes"]
    assert "./nginx/certs:/etc/nginx/certs:ro" in mounts
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in mounts
    for path in re.findall(r"ssl_certificate(?:_key)? (\S+);", text):
        assert path.startswith("/etc/nginx/certs/"), path


def test_nginx_conf_lets_only_loopback_read_metrics() -> None:
    """/metrics is for scrapers inside (docs/deploy.md, "Metrics"), not for the world."""
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    block = re.search(r"location = /metrics \{(.*?)\}", text, re.S)
    assert block, "nginx.conf has no location = /metrics"
    rules = [
        line.split("#")[0].strip()
        for line in block.group(1).splitlines()
        if line.split("#")[0].strip()
    ]
    assert [r for r in rules if r.startswith("allow ")] == ["allow 127.0.0.1;", "allow ::1;"]
    assert rules.index("deny all;") > max(i for i, r in enumerate(rules) if r.startswith("allow "))
    assert "proxy_pass http://gateway;" in rules


# -- Kubernetes -----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest(kustomization: dict[str, Any]) -> None:
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(
    manifests: dict[str, dict[str, Any]], version: str
) -> None:
    assert set(manifests) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
    }
    for kind, manifest in manifests.items():
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_schema_check_catches_a_misspelled_field(manifests: dict[str, dict[str, Any]]) -> None:
    """The validation is strict and offline: a typo in a probe fails it."""
    import copy

    broken = copy.deepcopy(manifests["Deployment"])
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["failureTreshold"] = probe.pop("failureThreshold")
    with pytest.raises(kubernetes_validate.ValidationError, match="failureTreshold"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_deployment_probes_replicas_and_shutdown(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 5001}
    env = {e["name"]: e for e in container["env"]}
    assert env["REGISTRY_GATEWAY_LISTEN"]["value"] == "0.0.0.0:5001"

    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"

    # preStop sleep, then SIGTERM; the grace period covers the sleep, the gateway's own drain
    # (drain_seconds, 5 s by default) and uvicorn's 20 s for in-flight requests.
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(sleep[1]) + 5 + 20
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for c in (*pod["initContainers"], container):
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_ingress_and_disruption_budget_select_the_deployment(
    manifests: dict[str, dict[str, Any]],
) -> None:
    deployment = manifests["Deployment"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()

    pdb = manifests["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]

    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"

    ingress = manifests["Ingress"]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": port["name"]}}
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
    public_url = manifests["ConfigMap"]["data"]["REGISTRY_GATEWAY_PUBLIC_URL"]
    assert public_url == f"https://{rule['host']}"


def _ingress_routes(paths: list[dict[str, Any]], url: str) -> bool:
    """Whether one of an Ingress rule's paths takes `url`, as Kubernetes defines Exact and
    Prefix (element by element, a trailing slash ignored)."""
    parts = [p for p in url.split("/") if p]
    for path in paths:
        wanted = [p for p in path["path"].split("/") if p]
        if path["pathType"] == "Exact" and path["path"] == url:
            return True
        if path["pathType"] == "Prefix" and parts[: len(wanted)] == wanted:
            return True
    return False


def test_the_ingress_routes_the_public_paths_and_not_metrics(
    manifests: dict[str, dict[str, Any]],
) -> None:
    (rule,) = manifests["Ingress"]["spec"]["rules"]
    paths = rule["http"]["paths"]
    backends = {str(path["backend"]) for path in paths}
    assert len(backends) == 1  # every path to the one Service
    public = ["/", "/auth/token", "/.well-known/jwks.json", "/n/platform", "/n/_",
              "/r/platform/api", "/r/platform/prod/api:v1", "/search", "/-/login", "/-/logout",
              "/-/teams", "/-/access/r/platform/api", "/-/static/style.css", "/-/reload"]  # fmt: skip
    assert [url for url in public if not _ingress_routes(paths, url)] == []
    internal = ["/metrics", "/metrics/", "/healthz", "/readyz", "/v2/"]
    assert [url for url in internal if _ingress_routes(paths, url)] == []
    # Scraped from the pods through the Service instead.
    annotations = manifests["Service"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    container = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {
        int(annotations["prometheus.io/port"])
    }
