"""Reading the deployment files in deploy/ as compose and Kubernetes would see them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
REPLICAS = ("gateway-1", "gateway-2")


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


def compose_file() -> dict[str, Any]:
    """deploy/compose.yaml."""
    data: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    return data


def registry_config_file() -> dict[str, Any]:
    """deploy/registry/config.yml."""
    data: dict[str, Any] = load_yaml(DEPLOY / "registry" / "config.yml")
    return data


def replica_env(compose: dict[str, Any]) -> dict[str, str]:
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


def kustomization_file() -> dict[str, Any]:
    """deploy/kubernetes/kustomization.yaml."""
    data: dict[str, Any] = load_yaml(KUBERNETES / "kustomization.yaml")
    return data


def kubernetes_manifests(
    kustomization: dict[str, Any], directory: Path = KUBERNETES
) -> dict[str, dict[str, Any]]:
    """Every resource the kustomization lists, by `Kind/name` (`Deployment/registry`)."""
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((directory / name).read_text()):
            key = f"{document['kind']}/{document['metadata']['name']}"
            assert key not in out, key
            out[key] = document
    return out
