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
    REPO,
    compose_file,
    interpolate,
    kubernetes_manifests,
    kustomization_file,
    load_yaml,
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

GATEWAY = "registry-gateway"
REGISTRY = "registry"


def pod_of(manifests: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    pod: dict[str, Any] = manifests[f"Deployment/{name}"]["spec"]["template"]
    return pod


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as these files use) takes `labels`."""
    assert set(selector) <= {"matchLabels"}, selector
    return bool(selector) and selector["matchLabels"].items() <= labels.items()


def test_kustomization_lists_every_manifest(kustomization: dict[str, Any]) -> None:
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(
    manifests: dict[str, dict[str, Any]], version: str
) -> None:
    assert set(manifests) == {
        "ServiceAccount/registry-gateway",
        "ConfigMap/registry-gateway-settings",
        "Deployment/registry-gateway",
        "Service/registry-gateway",
        "Ingress/registry-gateway",
        "PodDisruptionBudget/registry-gateway",
        "HorizontalPodAutoscaler/registry-gateway",
        "NetworkPolicy/registry-gateway",
        "ServiceAccount/registry",
        "Deployment/registry",
        "Service/registry",
        "PersistentVolumeClaim/registry-data",
        "Ingress/registry",
        "NetworkPolicy/registry",
    }
    for key, manifest in manifests.items():
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_schema_check_catches_a_misspelled_field(manifests: dict[str, dict[str, Any]]) -> None:
    """The validation is strict and offline: a typo in a probe fails it."""
    import copy

    broken = copy.deepcopy(manifests["Deployment/registry-gateway"])
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["failureTreshold"] = probe.pop("failureThreshold")
    with pytest.raises(kubernetes_validate.ValidationError, match="failureTreshold"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_deployment_probes_and_shutdown(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment/registry-gateway"]
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
    for name in (GATEWAY, REGISTRY):
        spec = pod_of(manifests, name)["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for c in (*spec.get("initContainers", ()), *spec["containers"]):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_autoscaler_and_the_disruption_budget_agree(
    manifests: dict[str, dict[str, Any]],
) -> None:
    """CPU scaling of the Deployment, a budget that holds at any scale, and no replica count
    in the Deployment for `kubectl apply` to reset."""
    deployment = manifests["Deployment/registry-gateway"]
    hpa = manifests["HorizontalPodAutoscaler/registry-gateway"]["spec"]
    pdb = manifests["PodDisruptionBudget/registry-gateway"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 90
    # Utilization is of the request: every container must ask for CPU.
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["resources"]["requests"]["cpu"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]

    # One pod at a time may go, and at least two serve while it does, even at minReplicas.
    assert "minAvailable" not in pdb
    assert pdb["maxUnavailable"] == 1
    assert hpa["minReplicas"] - pdb["maxUnavailable"] >= 2
    assert pdb["selector"] == deployment["spec"]["selector"]


def test_service_ingress_and_disruption_budget_select_the_deployment(
    manifests: dict[str, dict[str, Any]],
) -> None:
    deployment = manifests["Deployment/registry-gateway"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()

    pdb = manifests["PodDisruptionBudget/registry-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector

    service = manifests["Service/registry-gateway"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    # The registry's pods are not behind the gateway's Service or budget, and the other way.
    registry_labels = pod_of(manifests, REGISTRY)["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= registry_labels.items()
    assert not selects(pdb["spec"]["selector"], registry_labels)
    assert not manifests["Service/registry"]["spec"]["selector"].items() <= labels.items()

    ingress = manifests["Ingress/registry-gateway"]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": port["name"]}}
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
    public_url = manifests["ConfigMap/registry-gateway-settings"]["data"][
        "REGISTRY_GATEWAY_PUBLIC_URL"
    ]
    assert public_url == f"https://{rule['host']}"


def test_every_pod_runs_as_its_own_service_account_without_an_api_token(
    manifests: dict[str, dict[str, Any]],
) -> None:
    for name in (GATEWAY, REGISTRY):
        spec = pod_of(manifests, name)["spec"]
        account = manifests[f"ServiceAccount/{spec['serviceAccountName']}"]
        assert account["automountServiceAccountToken"] is False
        assert spec["automountServiceAccountToken"] is False
    accounts = {
        pod_of(manifests, name)["spec"]["serviceAccountName"] for name in (GATEWAY, REGISTRY)
    }
    assert len(accounts) == 2


def _peers(rule: dict[str, Any], key: str) -> list[dict[str, Any]]:
    peers: list[dict[str, Any]] = rule[key]
    return peers


def _admits(peers: list[dict[str, Any]], namespace: str | None, labels: dict[str, str]) -> bool:
    """Whether one of a rule's peers takes a pod with `labels` in `namespace` (None: the
    policy's own namespace)."""
    for peer in peers:
        ns = peer.get("namespaceSelector")
        pods = peer.get("podSelector")
        if namespace is None and ns is None and pods is not None and selects(pods, labels):
            return True
        if (
            namespace is not None
            and ns is not None
            and selects(ns, {"kubernetes.io/metadata.name": namespace})
            and (pods is None or selects(pods, labels))
        ):
            return True
    return False


def _port_numbers(pod: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}


def test_network_policies_let_in_only_who_needs_in(manifests: dict[str, dict[str, Any]]) -> None:
    gateway_pod, registry_pod = pod_of(manifests, GATEWAY), pod_of(manifests, REGISTRY)
    gateway_labels, registry_labels = (
        gateway_pod["metadata"]["labels"],
        registry_pod["metadata"]["labels"],
    )
    gateway_ports, registry_ports = _port_numbers(gateway_pod), _port_numbers(registry_pod)
    controller = {"app.kubernetes.io/name": "ingress-nginx"}
    prometheus = {"app.kubernetes.io/name": "prometheus"}

    gateway = manifests["NetworkPolicy/registry-gateway"]["spec"]
    assert selects(gateway["podSelector"], gateway_labels)
    assert not selects(gateway["podSelector"], registry_labels)
    assert gateway["policyTypes"] == ["Ingress", "Egress"]
    (inbound,) = gateway["ingress"]
    assert [p["port"] for p in inbound["ports"]] == ["http"]
    peers = _peers(inbound, "from")
    assert _admits(peers, "ingress-nginx", controller)  # tokens and the UI
    assert _admits(peers, "monitoring", prometheus)  # /metrics
    assert _admits(peers, None, registry_labels)  # notifications
    assert not _admits(peers, None, {"app.kubernetes.io/name": "something-else"})
    assert not _admits(peers, "default", {})
    # Out: DNS, the registry's API on its port, git over HTTPS.
    out = {p["port"]: rule for rule in gateway["egress"] for p in rule["ports"]}
    assert {53, registry_ports["registry"], 443} == set(out)
    assert _admits(_peers(out[registry_ports["registry"]], "to"), None, registry_labels)
    assert _admits(_peers(out[53], "to"), "kube-system", {"k8s-app": "kube-dns"})

    registry = manifests["NetworkPolicy/registry"]["spec"]
    assert selects(registry["podSelector"], registry_labels)
    assert not selects(registry["podSelector"], gateway_labels)
    (inbound,) = registry["ingress"]
    assert [p["port"] for p in inbound["ports"]] == ["registry"]
    peers = _peers(inbound, "from")
    assert _admits(peers, "ingress-nginx", controller)  # clients
    assert _admits(peers, None, gateway_labels)  # the catalog's reads
    assert not _admits(peers, "monitoring", prometheus)
    out = {p["port"]: rule for rule in registry["egress"] for p in rule["ports"]}
    assert set(out) == {53, gateway_ports["http"]}
    assert _admits(_peers(out[gateway_ports["http"]], "to"), None, gateway_labels)


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
    (rule,) = manifests["Ingress/registry-gateway"]["spec"]["rules"]
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
    annotations = manifests["Service/registry-gateway"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    container = manifests["Deployment/registry-gateway"]["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert {p["containerPort"] for p in container["ports"]} == {
        int(annotations["prometheus.io/port"])
    }
    # The registry's own Ingress takes its API and nothing of the gateway's.
    (rule,) = manifests["Ingress/registry"]["spec"]["rules"]
    assert _ingress_routes(rule["http"]["paths"], "/v2/platform/api/manifests/v1")
    assert not _ingress_routes(rule["http"]["paths"], "/auth/token")


def test_the_service_monitor_scrapes_the_gateway_pods(manifests: dict[str, dict[str, Any]]) -> None:
    """The Prometheus Operator overlay: everything of deploy/kubernetes plus a ServiceMonitor
    (a custom resource: no schema ships for it, so its shape is checked here)."""
    overlay = load_yaml(KUBERNETES / "prometheus-operator" / "kustomization.yaml")
    assert overlay["resources"] == ["..", "servicemonitor.yaml"]
    monitor = load_yaml(KUBERNETES / "prometheus-operator" / "servicemonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    )
    service = manifests["Service/registry-gateway"]
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert not selects(
        monitor["spec"]["selector"], manifests["Service/registry"]["metadata"]["labels"]
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_the_registry_trusts_and_notifies_the_gateway(
    manifests: dict[str, dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    settings = manifests["ConfigMap/registry-gateway-settings"]["data"]
    config = load_yaml(KUBERNETES / "registry" / "config.yml")
    token = config["auth"]["token"]
    assert token["realm"] == settings["REGISTRY_GATEWAY_PUBLIC_URL"] + "/auth/token"
    assert token["service"] == settings["REGISTRY_GATEWAY_SERVICE"]
    assert token["issuer"] == settings["REGISTRY_GATEWAY_ISSUER"]

    pod = pod_of(manifests, REGISTRY)["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    generated = {g["name"]: g for g in kustomization["configMapGenerator"]}

    # config.yml and the bundle: ConfigMaps generated from files, mounted where the command
    # and the config read them.
    (config_file,) = generated[volumes["config"]["configMap"]["name"]]["files"]
    key, source = config_file.split("=")
    assert (KUBERNETES / source).resolve() == (KUBERNETES / "registry" / "config.yml").resolve()
    command = container["args"][0]
    assert f"{mounts['config']}/{key} > /tmp/config.yml" in command
    assert "exec registry serve /tmp/config.yml" in command
    (bundle_file,) = generated[volumes["bundle"]["configMap"]["name"]]["files"]
    assert token["rootcertbundle"] == f"{mounts['bundle']}/{bundle_file.split('=')[0]}"
    assert bundle_file.endswith("=secrets/registry-gateway.pem")  # certificates only

    # Notifications to the gateway's Service, with the gateway's own notification secret.
    (endpoint,) = config["notifications"]["endpoints"]
    service = manifests["Service/registry-gateway"]
    (port,) = service["spec"]["ports"]
    host = service["metadata"]["name"] + ("" if port["port"] == 80 else f":{port['port']}")
    assert endpoint["url"] == f"http://{host}/-/notifications"
    assert endpoint["headers"]["Authorization"] == ["Bearer <notification_secret>"]
    assert "s|<notification_secret>|${NOTIFICATION_SECRET}|" in command
    env = {e["name"]: e for e in container["env"]}
    gateway_env = {e["name"]: e for e in pod_of(manifests, GATEWAY)["spec"]["containers"][0]["env"]}
    assert (
        env["NOTIFICATION_SECRET"]["valueFrom"]
        == gateway_env["REGISTRY_GATEWAY_NOTIFICATION_SECRET"]["valueFrom"]
    )
    assert "secretKeyRef" in env["REGISTRY_HTTP_SECRET"]["valueFrom"]

    # The gateway reads the catalog through the registry's Service; clients reach the
    # registry at the name the gateway shows in pull commands.
    registry_service = manifests["Service/registry"]
    (registry_port,) = registry_service["spec"]["ports"]
    assert settings["REGISTRY_GATEWAY_REGISTRY_URL"] == (
        f"http://{registry_service['metadata']['name']}:{registry_port['port']}"
    )
    (rule,) = manifests["Ingress/registry"]["spec"]["rules"]
    assert settings["REGISTRY_GATEWAY_REGISTRY_PUBLIC"] == rule["host"]
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] in {
        key.split("/", 1)[1] for key in manifests if key.startswith("PersistentVolumeClaim/")
    }
    assert manifests["Deployment/registry"]["spec"]["strategy"] == {"type": "Recreate"}


def test_the_gateway_image_is_pinned_by_digest(
    manifests: dict[str, dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    (image,) = kustomization["images"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"])
    assert "newTag" not in image
    spec = pod_of(manifests, GATEWAY)["spec"]
    for container in (*spec["initContainers"], *spec["containers"]):
        assert container["image"] == image["name"]  # no tag of its own: the digest is used


# -- the image ------------------------------------------------------------------------------


def test_the_dockerfile_runs_as_the_numeric_user_of_the_pods(
    manifests: dict[str, dict[str, Any]],
) -> None:
    """Kubernetes' runAsNonRoot can only check a numeric USER."""
    text = (REPO / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
    uid, gid = map(int, user.split(":"))
    context = pod_of(manifests, GATEWAY)["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert f"--uid {uid}" in text and f"--gid {gid}" in text


def locked() -> dict[str, tuple[str, list[str], str]]:
    """requirements.lock: name -> (version, hashes, environment marker)."""
    from packaging.utils import canonicalize_name

    out: dict[str, tuple[str, list[str], str]] = {}
    text = (REPO / "requirements.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(
            r"([A-Za-z0-9._-]+)==(\S+?)\s*(?:;\s*(.+?))?\s+((?:--hash=sha256:[0-9a-f]{64}\s*)+)",
            line,
        )
        assert match, f"requirements.lock: not a pinned, hashed requirement: {line[:80]}"
        name, version, marker, hashes = match.groups()
        out[canonicalize_name(name)] = (version, hashes.split(), (marker or "").strip())
    return out


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """Each dependency of pyproject.toml (and each one its extras bring, such as uvicorn's
    `standard`) is in requirements.lock at a version the requirement allows, with hashes.
    A dependency added without locking it again fails here."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = locked()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # The image: CPython 3.11 on Linux.
    environment = {"python_version": "3.11", "python_full_version": "3.11.12",
                   "sys_platform": "linux", "platform_system": "Linux",
                   "platform_python_implementation": "CPython", "implementation_name": "cpython",
                   "os_name": "posix", "platform_machine": "x86_64"}  # fmt: skip
    direct = [Requirement(text) for text in project["dependencies"]]
    wanted = [r for r in direct if not r.marker or r.marker.evaluate(environment)]
    for requirement in direct:
        for extra in requirement.extras:
            for text in importlib.metadata.requires(requirement.name) or ():
                brought = Requirement(text)
                if brought.marker and brought.marker.evaluate({**environment, "extra": extra}):
                    wanted.append(brought)
    assert len(wanted) > len(direct)  # the extras were read
    missing, outside = [], []
    for requirement in wanted:
        entry = lock.get(canonicalize_name(requirement.name))
        if entry is None:
            missing.append(requirement.name)
        elif not requirement.specifier.contains(entry[0], prereleases=True):
            outside.append(f"{requirement} (locked {entry[0]})")
        else:
            assert len(entry[1]) >= 1
    assert missing == [], "not in requirements.lock: run the command at its top"
    assert outside == [], "locked outside pyproject.toml's range: run the command at its top"


def test_the_dockerfile_installs_the_lock_with_hashes() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "COPY requirements.lock ./" in text
    assert re.search(r"pip install --require-hashes --no-deps -r requirements\.lock", text)
    assert re.search(r"pip install --no-deps \.", text)  # the gateway adds nothing unlocked
    assert "pip check" in text
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "!requirements.lock" in ignore
