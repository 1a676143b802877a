"""The deployment files in deploy/ against real programs: the gateway's commands (`serve --help`,
`registry-config`, `keys bundle`), Debian's registry reading the committed config, `nginx -t`,
deploy/render.sh, and git listing what docs/deploy.md must describe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.binaries import require
from tests.support.certs import self_signed
from tests.support.deploy import (
    DEPLOY,
    KUBERNETES,
    REPLICAS,
    REPO,
    compose_file,
    interpolate,
    kubernetes_manifests,
    kustomization_file,
    registry_config_file,
    replica_env,
)
from tests.support.nginx import Nginx, nginx_binary
from tests.support.registry import free_port


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_file()


@pytest.fixture(scope="module")
def gateway_env(compose: dict[str, Any]) -> dict[str, str]:
    """The environment of a gateway replica in compose, with env.example's variables filled."""
    return replica_env(compose)


@pytest.fixture(scope="module")
def registry_config() -> dict[str, Any]:
    return registry_config_file()


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return kustomization_file()


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return kubernetes_manifests(kustomization)


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


# -- compose.yaml and the registry config ---------------------------------------------------


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


def test_registry_auth_agrees_with_the_gateway_settings_in_kubernetes(
    manifests: dict[str, dict[str, Any]],
) -> None:
    """deploy/kubernetes/registry/config.yml: `registry-config` with the ConfigMap's settings
    prints exactly its auth section, and its notification endpoint is the printed one, sent to
    the gateway's Service."""
    config = yaml.safe_load((KUBERNETES / "registry" / "config.yml").read_text())
    settings = dict(manifests["ConfigMap/registry-gateway-settings"]["data"])
    settings["REGISTRY_GATEWAY_NOTIFICATION_SECRET"] = "any"
    bundle = config["auth"]["token"]["rootcertbundle"]
    proc = gateway_cli("registry-config", "--rootcertbundle", bundle, env=settings)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["auth"] == config["auth"]
    (generated,) = printed["notifications"]["endpoints"]
    (endpoint,) = config["notifications"]["endpoints"]
    assert {k: v for k, v in endpoint.items() if k != "url"} == {
        k: v for k, v in generated.items() if k != "url"
    }


def test_the_registry_starts_with_the_kubernetes_config(
    tmp_path: Path, manifests: dict[str, dict[str, Any]]
) -> None:
    """Debian's Distribution 2.8 reads the Kubernetes config.yml after the container's command
    put the secret in, with the pod's paths moved to tmp."""
    binary = require("docker-registry", "docker-registry")
    proc = gateway_cli("keys", "bundle", "--data-dir", str(tmp_path / "data"), "-o",
                       str(tmp_path / "bundle.pem"), env={})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    command = manifests["Deployment/registry"]["spec"]["template"]["spec"]["containers"][0]
    script = command["args"][0].replace("/etc/docker/registry/config/", f"{KUBERNETES}/registry/")
    script = script.replace("/tmp/config.yml", str(tmp_path / "config.yml"))
    sed_line, exec_line = script.strip().splitlines()
    port = free_port()
    subprocess.run(["sh", "-ec", sed_line], env={"NOTIFICATION_SECRET": "secret-for-test"},
                   check=True, timeout=30)  # fmt: skip
    config = tmp_path / "config.yml"
    text = (
        config.read_text()
        .replace("/etc/docker/registry/auth/registry-gateway.pem", str(tmp_path / "bundle.pem"))
        .replace("/var/lib/registry", str(tmp_path / "storage"))
        .replace("addr: :5000", f"addr: 127.0.0.1:{port}")
    )
    config.write_text(text)
    assert exec_line == f"exec registry serve {config}"
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
    assert (
        "configuring endpoint registry-gateway (http://registry-gateway/-/notifications)" in logged
    )
    assert "Authorization:[Bearer secret-for-test]" in logged


# -- nginx.conf -----------------------------------------------------------------------------


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


def test_nginx_lets_only_loopback_read_metrics(tmp_path: Path) -> None:
    """The committed nginx.conf, run by Debian's nginx in front of a stand-in replica: a caller
    from another address (127.0.0.2, as a client elsewhere would be) gets 403 for /metrics,
    however it spells the path, and reaches everything else; 127.0.0.1 may read /metrics."""
    seen: list[str] = []

    class Replica(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    replica = ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    write_self_signed(tmp_path / "certs")
    (tmp_path / "temp").mkdir()
    port = free_port()
    temp = "".join(
        f"    {name}_temp_path {tmp_path}/temp/{name};\n" for name in ("client_body", "proxy")
    )
    user = "user root root;\n" if os.geteuid() == 0 else ""
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    adapted = (
        "daemon off;\n"
        + user
        + text.replace(" resolve ", " ")
        .replace("http2 on;", "")
        .replace("resolver 127.0.0.11 valid=10s ipv6=off;", temp)
        .replace("/etc/nginx/certs", str(tmp_path / "certs"))
        .replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
        .replace("error_log /dev/stderr warn;", f"error_log {tmp_path}/error.log warn;")
        .replace("access_log /dev/stdout gateway;", f"access_log {tmp_path}/access.log gateway;")
        .replace("listen 8443 ssl;", f"listen 127.0.0.1:{port} ssl;")
        .replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{free_port()};")
    )
    for name in REPLICAS:
        adapted = adapted.replace(f"server {name}:5001", f"server 127.0.0.1:{replica.server_port}")
    nginx = Nginx(tmp_path, port)
    nginx.config_path.write_text(adapted)
    nginx.start()
    outside = httpx.Client(
        base_url=f"https://127.0.0.1:{port}",
        transport=httpx.HTTPTransport(local_address="127.0.0.2", verify=False),
        timeout=10,
    )
    inside = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=False, timeout=10)
    try:
        for target in (b"/metrics", b"//metrics", b"/%6detrics", b"/x/../metrics", b"/metrics?x"):
            # the request target exactly as written (httpx would normalise some of them)
            answer = outside.get("/", extensions={"target": target})
            assert answer.status_code == 403, (target, seen)
        assert seen == []
        assert outside.get("/healthz").status_code == 200
        assert outside.post("/-/reload").status_code == 200  # the gateway asks for its secret
        assert outside.post("/-/notifications").status_code == 404
        assert inside.get("/metrics").status_code == 200
        assert seen == ["/healthz", "/-/reload", "/metrics"]
    finally:
        outside.close()
        inside.close()
        nginx.stop()
        replica.shutdown()
        replica.server_close()


# -- Kubernetes -----------------------------------------------------------------------------


def test_deployment_keys_policy_and_secrets(
    manifests: dict[str, dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    pod = manifests["Deployment/registry-gateway"]["spec"]["template"]["spec"]
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
    # The registry's: its http.secret, and the gateway's notification secret.
    registry = manifests["Deployment/registry"]["spec"]["template"]["spec"]
    for entry in registry["containers"][0]["env"]:
        ref = entry["valueFrom"]["secretKeyRef"]
        references.append(ref["name"])
        assert ref["key"] in [f.split("=")[0] for f in generated[ref["name"]]["files"]], ref
    for name in ("registry-gateway", "registry"):
        for tls in manifests[f"Ingress/{name}"]["spec"]["tls"]:
            references.append(tls["secretName"])
            assert generated[tls["secretName"]]["type"] == "kubernetes.io/tls"
    assert set(references) == set(generated)
    # Every file a generator reads is one docs/deploy.md tells how to make, under secrets/.
    steps = (REPO / "docs" / "deploy.md").read_text()
    for generator in (*kustomization["secretGenerator"], *kustomization["configMapGenerator"]):
        for entry in generator["files"]:
            source = entry.split("=")[1]
            if source.startswith("secrets/"):
                assert source.removeprefix("secrets/") in steps, source
    (source,) = container["envFrom"]
    assert (
        source["configMapRef"]["name"]
        == manifests["ConfigMap/registry-gateway-settings"]["metadata"]["name"]
    )

    # The policy from git; every setting in the ConfigMap is one `serve` knows.
    settings = manifests["ConfigMap/registry-gateway-settings"]["data"]
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
