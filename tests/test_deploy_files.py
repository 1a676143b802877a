"""The deployment files in deploy/: their shape, their agreement with the gateway, and what can
be run here without a container engine (the registry config, nginx's syntax, the Kubernetes
schemas, offline, from the kubernetes-validate package)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from support.binaries import require
from support.certs import self_signed
from support.nginx import nginx_binary
from support.registry import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
REPLICAS = ("gateway-1", "gateway-2")
# The oldest and newest Kubernetes versions whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} with the variables of env.example."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        given = variables.get(name, "")
        if op == ":-":
            return given or arg
        if op == ":?":
            assert given, f"{name} must be set: {arg}"
        return given

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


@pytest.fixture(scope="module")
def gateway_env(compose: dict[str, Any]) -> dict[str, str]:
    """The environment of a gateway replica in compose, with env.example's variables filled."""
    variables = {
        **env_file(DEPLOY / "env.example"),
        "RELOAD_SECRET": "r",
        "NOTIFICATION_SECRET": "n",
    }
    service = compose["services"]["gateway-1"]
    env: dict[str, str] = {}
    for name in service["env_file"]:
        env.update(env_file(DEPLOY / name))
    for key, value in service["environment"].items():
        env[key] = interpolate(str(value), variables)
    return env


@pytest.fixture(scope="module")
def registry_config() -> dict[str, Any]:
    return load_yaml(DEPLOY / "registry" / "config.yml")


def gateway_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **env},
        timeout=60,
    )


def serve_help() -> str:
    """`serve --help`, unwrapped: each setting shows as `env REGISTRY_GATEWAY_NAME;`."""
    return " ".join(gateway_cli("serve", "--help", env={}).stdout.split())


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


def test_compose_policy_from_a_checkout_or_a_git_remote(
    compose: dict[str, Any], gateway_env: dict[str, str]
) -> None:
    environment = compose["services"]["gateway-1"]["environment"]
    assert environment["REGISTRY_GATEWAY_POLICY_GIT"] == "${POLICY_GIT:-}"
    assert "POLICY_GIT_TOKEN" in environment["REGISTRY_GATEWAY_POLICY_GIT_TOKEN"]
    # With POLICY_GIT empty (env.example), the mounted checkout is served.
    assert gateway_env["REGISTRY_GATEWAY_POLICY_GIT"] == ""
    checkout = next(
        v for v in compose["services"]["gateway-1"]["volumes"] if "POLICY_CHECKOUT" in v
    )
    assert checkout.endswith(":ro")
    mount_point = interpolate(checkout, {}).split(":")[1]
    assert gateway_env["REGISTRY_GATEWAY_POLICIES"].startswith(mount_point + "/")
    # Every non-secret REGISTRY_GATEWAY_* variable is a setting `serve` knows.
    help_text = serve_help()
    secrets = {"POLICY_GIT_TOKEN", "RELOAD_SECRET", "NOTIFICATION_SECRET"}
    for name in gateway_env:
        if (
            name.startswith("REGISTRY_GATEWAY_")
            and name.removeprefix("REGISTRY_GATEWAY_") not in secrets
        ):
            assert f"env {name};" in help_text, name


def test_registry_auth_agrees_with_the_gateway_settings_in_compose(
    gateway_env: dict[str, str], registry_config: dict[str, Any]
) -> None:
    token = registry_config["auth"]["token"]
    assert token["realm"] == gateway_env["REGISTRY_GATEWAY_PUBLIC_URL"] + "/auth/token"
    assert token["service"] == gateway_env["REGISTRY_GATEWAY_SERVICE"]
    assert token["issuer"] == gateway_env["REGISTRY_GATEWAY_ISSUER"]

    # `registry-config` with those settings prints exactly the committed auth section.
    settings = {k: v for k, v in gateway_env.items() if k.startswith("REGISTRY_GATEWAY_")}
    proc = gateway_cli("registry-config", "--rootcertbundle", token["rootcertbundle"], env=settings)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["auth"] == registry_config["auth"]

    # Notifications: one endpoint per replica, with the endpoint registry-config prints.
    generated = printed["notifications"]["endpoints"][0]
    endpoints = registry_config["notifications"]["endpoints"]
    assert [e["name"] for e in endpoints] == list(REPLICAS)
    for endpoint, replica in zip(endpoints, REPLICAS, strict=True):
        assert endpoint["url"] == f"http://{replica}:5001/-/notifications"
        assert {k: v for k, v in endpoint.items() if k not in ("name", "url")} == {
            k: v for k, v in generated.items() if k not in ("name", "url")
        }


def test_render_script_reproduces_the_committed_registry_config(tmp_path: Path) -> None:
    out = tmp_path / "config.yml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY_")}
    env.update(OUT=str(out), GATEWAY=f"{sys.executable} -m gateway", REGISTRY_GATEWAY_SERVICE="x")
    proc = subprocess.run(
        ["sh", str(DEPLOY / "render.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == (DEPLOY / "registry" / "config.yml").read_text(), (
        "deploy/registry/config.yml is stale: run deploy/render.sh"
    )


def test_the_registry_starts_with_the_committed_config(
    tmp_path: Path, compose: dict[str, Any], registry_config: dict[str, Any]
) -> None:
    """Debian's Distribution 2.8 reads the file, with the container's paths moved to tmp."""
    binary = require("docker-registry", "docker-registry")
    proc = gateway_cli("keys", "bundle", "--data-dir", str(tmp_path / "data"), "-o",
                       str(tmp_path / "bundle.pem"), env={})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # What the registry container's command does: the secret in place of the placeholder.
    command = "\n".join(compose["services"]["registry"]["command"])
    assert "s|<notification_secret>|$${NOTIFICATION_SECRET}|" in command
    port = free_port()
    text = (
        (DEPLOY / "registry" / "config.yml")
        .read_text()
        .replace("<notification_secret>", "secret-for-test")
        .replace(registry_config["auth"]["token"]["rootcertbundle"], str(tmp_path / "bundle.pem"))
        .replace("/var/lib/registry", str(tmp_path / "storage"))
        .replace("addr: :5000", f"addr: 127.0.0.1:{port}")
    )
    config = tmp_path / "config.yml"
    config.write_text(text)
    log = tmp_path / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 10
        while f"listening on 127.0.0.1:{port}" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(10)
    logged = log.read_text()
    for replica in REPLICAS:
        assert f"configuring endpoint {replica} (http://{replica}:5001/-/notifications)" in logged
    assert "Authorization:[Bearer secret-for-test]" in logged


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


def write_self_signed(directory: Path) -> None:
    certificate, key = self_signed("localhost")
    directory.mkdir(parents=True)
    (directory / "gateway.crt.pem").write_bytes(certificate)
    (directory / "gateway.key.pem").write_bytes(key)


def test_nginx_conf_syntax(tmp_path: Path) -> None:
    """`nginx -t` with Debian's nginx (1.22), after removing what needs 1.27 or Docker's DNS."""
    binary = nginx_binary()
    write_self_signed(tmp_path / "certs")
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    adapted = (
        text.replace(" resolve ", " ")  # 1.27.3+: re-resolve replica names
        .replace("http2 on;", "")  # 1.25.1+
        .replace("resolver 127.0.0.11 valid=10s ipv6=off;", "")  # Docker's DNS
        .replace("/etc/nginx/certs", str(tmp_path / "certs"))
        .replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    )
    for replica in REPLICAS:
        adapted = adapted.replace(f"server {replica}:5001", "server 127.0.0.1:5001")
    assert adapted.count("127.0.0.1:5001") == len(REPLICAS)
    (tmp_path / "nginx.conf").write_text(adapted)
    proc = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
         "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "syntax is ok" in proc.stderr


# -- Kubernetes -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return load_yaml(KUBERNETES / "kustomization.yaml")


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every resource the kustomization lists, by kind (one of each here)."""
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
            assert document["kind"] not in out
            out[document["kind"]] = document
    return out


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


def test_deployment_keys_policy_and_secrets(
    manifests: dict[str, dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    generated = {g["name"]: g for g in kustomization["secretGenerator"]}

    # The signing keys: a Secret, mounted read-only, copied into the pod's own data dir.
    (init,) = pod["initContainers"]
    key_mount = next(m for m in init["volumeMounts"] if m["name"] == "signing-keys")
    assert key_mount["readOnly"] is True
    keys_secret = volumes["signing-keys"]["secret"]["secretName"]
    assert f"cp {key_mount['mountPath']}/*.pem /data/keys/" in init["args"][0]
    assert all(m["name"] != "signing-keys" for m in container["volumeMounts"])
    key_files = [f.split("=")[0] for f in generated[keys_secret]["files"]]
    stems = {name.removesuffix(".key.pem").removesuffix(".crt.pem") for name in key_files}
    for stem in stems:  # the key store's file names, each key with its certificate
        assert re.fullmatch(r"\d{20}-[A-Z2-7]{8}", stem), stem
        assert {f"{stem}.key.pem", f"{stem}.crt.pem"} <= set(key_files)

    # Every Secret and ConfigMap referenced exists in the kustomization or the manifests.
    env = {e["name"]: e for e in container["env"]}
    references = [keys_secret]
    for name in ("POLICY_GIT_TOKEN", "RELOAD_SECRET", "NOTIFICATION_SECRET"):
        ref = env[f"REGISTRY_GATEWAY_{name}"]["valueFrom"]["secretKeyRef"]
        references.append(ref["name"])
        keys = [f.split("=")[0] for f in generated[ref["name"]]["files"]]
        assert ref["key"] in keys, (name, ref)
    for tls in manifests["Ingress"]["spec"]["tls"]:
        references.append(tls["secretName"])
        assert generated[tls["secretName"]]["type"] == "kubernetes.io/tls"
    assert set(references) == set(generated)
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == manifests["ConfigMap"]["metadata"]["name"]

    # The policy from git; every setting in the ConfigMap is one `serve` knows.
    settings = manifests["ConfigMap"]["data"]
    assert settings["REGISTRY_GATEWAY_POLICY_GIT"].startswith("https://")
    help_text = serve_help()
    for name in settings:
        if name.startswith("REGISTRY_GATEWAY_"):
            assert f"env {name};" in help_text, name
    for name in ("policy_git_token", "reload_secret", "notification_secret"):
        assert (
            f"REGISTRY_GATEWAY_{name.upper()}" in (REPO / "docs" / "configuration.md").read_text()
        )

    # The image the kustomization rewrites is the one the pods run.
    (image,) = kustomization["images"]
    assert {c["image"].split(":")[0] for c in (*pod["initContainers"], container)} == {
        image["name"]
    }


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


# -- docs -----------------------------------------------------------------------------------


def test_every_deploy_file_is_documented() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "deploy"],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout.split()  # fmt: skip
    assert "deploy/compose.yaml" in listed
    for shown in listed:
        if not shown.endswith(".gitignore"):
            assert f"`{shown}`" in text, f"{shown} is not described in docs/deploy.md"
