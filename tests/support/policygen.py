"""Generated policies: realistic YAML texts for the property tests and the benchmark.

A `PolicySpec` holds a policy as plain data (what a person would write), so a test can
change it (add a grant, drop a team member) and compute expectations from it without the
engine. `render` writes it as YAML files; given a `random.Random` it shuffles every list and
mapping and splits the entries over the files differently, which must not change a decision.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

# One valid bcrypt hash for every user: hashing is slow, and the loader only checks the format.
BCRYPT_HASH = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
VISIBILITIES = ("private", "protected", "public")
ROLES = ("owner", "contributor", "viewer")
ROLE_KEYS = ("owners", "contributors", "viewers")

_FIRST = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "yvonne",
    "zoe",
    "amir",
    "bea",
    "chen",
    "dmitri",
    "elif",
    "farah",
    "goran",
    "hana",
    "ines",
    "jun",
    "kofi",
    "lena",
    "mateo",
    "noor",
    "oskar",
    "priya",
    "quinn",
    "rosa",
    "sven",
    "tariq",
    "uma",
    "vera",
    "wen",
    "xavi",
    "yusuf",
]
_WORDS = [
    "platform",
    "payments",
    "search",
    "billing",
    "identity",
    "checkout",
    "catalog",
    "data",
    "ml",
    "infra",
    "security",
    "mobile",
    "web",
    "edge",
    "storage",
    "analytics",
    "ads",
    "growth",
    "media",
    "maps",
    "mail",
    "chat",
    "support",
    "docs",
    "build",
    "release",
    "observability",
    "network",
    "compute",
    "gaming",
    "video",
    "audio",
]
_APPS = [
    "api",
    "web",
    "worker",
    "db",
    "cache",
    "frontend",
    "backend",
    "builder",
    "base",
    "tools",
    "runner",
    "proxy",
    "gateway",
    "scheduler",
    "indexer",
    "exporter",
    "agent",
    "cli",
    "operator",
    "migrations",
]
_ROBOT_JOBS = ["ci", "deploy", "release", "mirror", "scan", "backup", "sync", "publish"]
_DESCRIPTIONS = (
    "Runs the service in production",
    "Builds and tests on every merge",
    "Shared images, pulled by every team",
    "Owned by the on-call rotation",
    "Internal tooling",
)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """PyYAML writes YAML 1.1; quote what the loader's YAML 1.2 would not read as a string."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if _QUOTE.fullmatch(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_QUOTE = re.compile(r"[-+]?[0-9]+|[0-9a-f]{64}|\$.*")
_Dumper.add_representer(str, _represent_str)


@dataclass
class PolicySpec:
    """A policy as data. Team members and grantees are written as in YAML (`bob`, `user:bob`)."""

    settings: dict[str, Any]
    users: dict[str, dict[str, Any]]
    robots: dict[str, dict[str, Any]]
    teams: dict[str, dict[str, Any]]
    namespaces: dict[str, dict[str, Any]]
    grants: list[dict[str, Any]] = field(default_factory=list)
    restrictions: list[dict[str, Any]] = field(default_factory=list)
    wildcards: float = 0.05  # the chance that a pattern starts with a wildcard (`**/cache`)
    _lists: dict[str, tuple[int, list[str]]] = field(default_factory=dict, repr=False)

    def names(self, section: str) -> list[str]:
        """The names of `users`, `robots`, `teams` or `namespaces`, as a list (cached)."""
        mapping = getattr(self, section)
        cached = self._lists.get(section)
        if cached is None or cached[0] != len(mapping):
            cached = self._lists[section] = (len(mapping), list(mapping))
        return cached[1]

    def copy(self) -> PolicySpec:
        return copy.deepcopy(self)

    def resolve(self, text: str) -> str:
        """A member or rule subject as the loader reads it: `kind:name` or a bare keyword."""
        if text in ("authenticated", "anonymous") or ":" in text:
            return text
        return f"user:{text}" if text in self.users else f"robot:{text}"


def _names(
    rng: random.Random, count: int, words: list[str] | tuple[str, ...], sep: str
) -> list[str]:
    """`count` distinct names: the words first, then the words with a number."""
    pool = list(words)
    rng.shuffle(pool)
    out = []
    for i in range(count):
        word = pool[i % len(pool)]
        out.append(word if i < len(pool) else f"{word}{sep}{i // len(pool)}")
    return out


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def generate_spec(
    rng: random.Random,
    *,
    users: int,
    teams: int,
    namespaces: int,
    grants: int,
    robots: int | None = None,
    restrictions: int | None = None,
    wildcards: float | None = None,
) -> PolicySpec:
    """A realistic policy of the given size; `robots` and `restrictions` default to a share.

    Patterns that start with a wildcard (`**`, `*/cache`) apply across namespaces; a real
    policy has a handful whatever its size, so by default about ten in all (`wildcards` is the
    chance per pattern).
    """
    wildcards = min(0.05, 5 / max(1, grants)) if wildcards is None else wildcards
    robots = max(1, users // 10) if robots is None else robots
    restrictions = max(1, namespaces // 50) if restrictions is None else restrictions
    settings = {
        "personal_namespaces": rng.random() < 0.8,
        "global_namespace": rng.choice(VISIBILITIES),
    }
    user_names = _names(rng, users, _FIRST, "")
    spec = PolicySpec(settings, {}, {}, {}, {}, wildcards=wildcards)
    for i, name in enumerate(user_names):
        fields: dict[str, Any] = {"full_name": name.capitalize(), "email": f"{name}@example.org"}
        if rng.random() < 0.9:
            fields["password"] = BCRYPT_HASH
        if i == 0 or rng.random() < 0.01:
            fields["admin"] = True
        if rng.random() < 0.02:
            fields["tokens"] = {"laptop": {"token_sha256": _hex(rng), "actions": ["pull"]}}
        spec.users[name] = fields
    for name in _names(rng, robots, [f"{job}-{w}" for job in _ROBOT_JOBS for w in _WORDS], "-"):
        fields = {"token_sha256": _hex(rng), "description": f"{name} pipeline"}
        roll = rng.random()
        if roll < 0.4:
            fields["expires"] = dt.date(rng.randint(2030, 2035), rng.randint(1, 12), 28)
        elif roll < 0.45:
            fields["expires"] = dt.date(2021, 6, 30)  # expired: a warning, still a valid policy
        spec.robots[name] = fields
    for name in _names(rng, teams, _WORDS, "-"):
        spec.teams[name] = _team(rng, spec, name)
    for name in _names(rng, namespaces, [w for w in _WORDS if w not in spec.users], "-"):
        owners = rng.sample(
            spec.names("teams"), k=min(len(spec.teams), rng.choice((0, 1, 1, 1, 2)))
        )
        spec.namespaces[name] = {
            "description": rng.choice(_DESCRIPTIONS),
            "teams": owners,
            "visibility": rng.choices(VISIBILITIES, weights=(5, 3, 2))[0],
        }
    spec.grants = [make_grant(rng, spec) for _ in range(grants)]
    spec.restrictions = [make_restriction(rng, spec) for _ in range(restrictions)]
    return spec


def _team(rng: random.Random, spec: PolicySpec, name: str) -> dict[str, Any]:
    team: dict[str, Any] = {"description": f"The {name} team"}
    for key, most in (("owners", 2), ("contributors", 6), ("viewers", 6)):
        count = rng.randint(1 if key == "owners" else 0, most)
        members = []
        for _ in range(count):
            if spec.robots and rng.random() < 0.1:
                robot = rng.choice(spec.names("robots"))
                members.append(robot if rng.random() < 0.3 else f"robot:{robot}")
            else:
                user = rng.choice(spec.names("users"))
                members.append(user if rng.random() < 0.6 else f"user:{user}")
        if members:
            team[key] = list(dict.fromkeys(members))
    if rng.random() < 0.2:
        dn = f"cn={name},ou=groups,dc=example,dc=org"
        team["ldap_groups"] = (
            [dn] if rng.random() < 0.5 else [{"group": dn, "role": rng.choice(ROLES)}]
        )
    return team


def _component(rng: random.Random) -> str:
    return rng.choice(_APPS)


def _pattern(rng: random.Random, spec: PolicySpec) -> str:
    """A repository pattern: mostly under a namespace, sometimes wild or without one."""
    if rng.random() < spec.wildcards:
        app, word = _component(rng), rng.choice(_WORDS)
        wild = ("**", "*", f"**/{app}", f"*/{app}", f"**/{app}/**", f"{word[:2]}*/**", f"{app}-*")
        return rng.choice(wild)
    roll = rng.random()
    if roll < 0.03:
        return _component(rng)  # a repository without a namespace
    if roll < 0.14 and spec.settings["personal_namespaces"]:
        ns = rng.choice(spec.names("users"))
    elif roll < 0.17:
        ns = f"{rng.choice(_WORDS)}-external"  # a namespace nobody declared
    else:
        ns = rng.choice(spec.names("namespaces") or spec.names("users") or ["lost"])
    app = _component(rng)
    return rng.choice(
        (
            f"{ns}/{app}",
            f"{ns}/{app}",
            f"{ns}/*",
            f"{ns}/**",
            f"{ns}/{app}/*",
            f"{ns}/*/{app}",
            f"{ns}/**/{app}",
            f"{ns}/{app}-*",
            f"{ns}/prod/**",
        )
    )


def make_grant(rng: random.Random, spec: PolicySpec) -> dict[str, Any]:
    """One grant over the spec's principals: users, teams, robots, authenticated, anonymous."""
    roll = rng.random()
    anonymous = False
    if roll < 0.35 and spec.users:
        user = rng.choice(spec.names("users"))
        to: list[str] = [user if rng.random() < 0.3 else f"user:{user}"]
    elif roll < 0.65 and spec.teams:
        to = [f"team:{rng.choice(spec.names('teams'))}"]
    elif roll < 0.75 and spec.robots:
        to = [f"robot:{rng.choice(spec.names('robots'))}"]
    elif roll < 0.85 and spec.users and spec.teams:
        to = [f"user:{rng.choice(spec.names('users'))}", f"team:{rng.choice(spec.names('teams'))}"]
    elif roll < 0.93:
        to = ["authenticated"]
    else:
        to, anonymous = ["anonymous"], True
    grant: dict[str, Any] = {"to": to}
    if rng.random() < 0.3:
        grant["description"] = rng.choice(_DESCRIPTIONS)
    grant["repositories"] = list(
        dict.fromkeys(_pattern(rng, spec) for _ in range(rng.randint(1, 3)))
    )
    if anonymous:
        if rng.random() < 0.5:
            grant["actions"] = ["pull"]
        else:
            grant["role"] = "viewer"
    elif rng.random() < 0.5:
        grant["role"] = rng.choice(ROLES)
    else:
        grant["actions"] = rng.choice((["pull"], ["pull", "push"], ["*"], ["pull", "delete"]))
    return grant


def make_restriction(rng: random.Random, spec: PolicySpec) -> dict[str, Any]:
    """A restriction reserving some actions on a few repositories for a short list."""
    candidates = list(_admins(spec))
    candidates += [f"robot:{name}" for name in spec.names("robots")[:20]]
    candidates += [f"team:{name}" for name in spec.names("teams")[:20]]
    candidates += [rng.choice(spec.names("users"))] if spec.users else []
    only = rng.sample(candidates, k=min(len(candidates), rng.randint(0, 3)))
    if rng.random() < 0.1:
        only.append(rng.choice(("authenticated", "anonymous")))
    ns = rng.choice(spec.names("namespaces") or ["prod"])
    if rng.random() < spec.wildcards:
        repositories = ["**/prod"]
    else:
        patterns = ([f"{ns}/prod/**"], [f"{ns}/release-*"], [f"{ns}/**"], [_pattern(rng, spec)])
        repositories = rng.choice(patterns)
    actions = rng.choice((["push", "delete"], ["delete"], ["*"], ["pull"], ["push"]))
    return {
        "description": "Only the listed may change these",
        "repositories": repositories,
        "actions": actions,
        "only": only,
    }


def _admins(spec: PolicySpec) -> list[str]:
    """`user:NAME` of every admin (cached while the users stay the same in number)."""
    cached = spec._lists.get("admins")
    if cached is None or cached[0] != len(spec.users):
        admins = [f"user:{name}" for name, f in spec.users.items() if f.get("admin")]
        cached = spec._lists["admins"] = (len(spec.users), admins)
    return cached[1]


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120)


def render(spec: PolicySpec, rng: random.Random | None = None, *, files: int = 4) -> dict[str, str]:
    """YAML texts by file name. Without `rng` a fixed layout; with it, shuffled and split."""
    if rng is None:
        return _render_fixed(spec)
    sections: dict[str, list[tuple[str | None, Any]]] = {}
    for section in ("users", "robots", "teams", "namespaces"):
        items = [(k, _shuffled(rng, v)) for k, v in getattr(spec, section).items()]
        rng.shuffle(items)
        sections[section] = items
    for section in ("grants", "restrictions"):
        rules: list[tuple[str | None, Any]] = [
            (None, _shuffled(rng, rule)) for rule in getattr(spec, section)
        ]
        rng.shuffle(rules)
        sections[section] = rules
    parts: list[dict[str, Any]] = [{} for _ in range(max(1, files))]
    rng.choice(parts)["settings"] = spec.settings
    for section, items in sections.items():
        for key, value in items:
            part = rng.choice(parts)
            if key is None:
                part.setdefault(section, []).append(value)
            else:
                part.setdefault(section, {})[key] = value
    names = rng.sample(range(100), k=len(parts))
    return {f"part-{n:02d}.yaml": _dump(part) for n, part in zip(names, parts, strict=True) if part}


def _shuffled(rng: random.Random, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with its fields, and every list among them, in a random order."""
    items = [(k, rng.sample(v, k=len(v)) if isinstance(v, list) else v) for k, v in entry.items()]
    rng.shuffle(items)
    return dict(items)


def _render_fixed(spec: PolicySpec, chunk: int = 2000) -> dict[str, str]:
    """One file per section, long sections split: users, teams and namespaces by 5,000
    entries, grants by `chunk` (as a large organisation would keep them)."""
    texts = {"settings.yaml": _write({"settings": spec.settings})}
    for section, where, size in (
        ("users", "people/users", 5000),
        ("robots", "people/robots", 5000),
        ("teams", "teams", 5000),
        ("namespaces", "namespaces", 5000),
    ):
        entries = list(getattr(spec, section).items())
        for i in range(0, max(1, len(entries)), size):
            name = f"{where}.yaml" if len(entries) <= size else f"{where}-{i // size:03d}.yaml"
            texts[name] = _write({section: dict(entries[i : i + size])})
    for i in range(0, max(1, len(spec.grants)), chunk):
        texts[f"access/grants-{i // chunk:03d}.yaml"] = _write(
            {"grants": spec.grants[i : i + chunk]}
        )
    texts["access/restrictions.yaml"] = _write({"restrictions": spec.restrictions})
    return texts


# -- a fast writer for the fixed layout (yaml.dump takes minutes at 100,000 users) ----------

_PLAIN = re.compile(r"[a-z][a-z0-9._-]*|[a-z][a-z0-9._ -]*[a-z0-9]")
_BARE_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "nan", "inf"}


def _scalar(value: Any) -> str:
    """A scalar as YAML 1.2 reads it back: plain when that is safe, else single-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | dt.date):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _BARE_WORDS:
        return text
    return "'" + text.replace("'", "''") + "'"


def _flow(value: Any) -> str | None:
    """A list of scalars or a mapping of scalars on one line, as yaml.dump writes leaves."""
    if isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values()):
        return "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in value.items()) + "}"
    return None


def _write(data: Any, indent: str = "") -> str:
    """Block YAML with flow leaves, the shape `_dump` gives, written without PyYAML."""
    lines: list[str] = []
    _emit(data, indent, lines)
    return "\n".join(lines) + "\n"


def _emit(data: Any, indent: str, lines: list[str]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            flow = _flow(value) if isinstance(value, dict | list) else _scalar(value)
            if flow is not None and (value or not isinstance(value, dict | list)):
                lines.append(f"{indent}{_scalar(key)}: {flow}")
            elif isinstance(value, dict | list) and not value:
                lines.append(f"{indent}{_scalar(key)}: {'{}' if isinstance(value, dict) else '[]'}")
            else:
                lines.append(f"{indent}{_scalar(key)}:")
                _emit(value, indent + "  ", lines)
    else:
        for item in data:
            flow = _flow(item) if isinstance(item, dict | list) else _scalar(item)
            if flow is not None and not isinstance(item, dict):
                lines.append(f"{indent}- {flow}")
            else:
                block: list[str] = []
                _emit(item, indent + "  ", block)
                lines.append(f"{indent}- {block[0].lstrip()}")
                lines.extend(block[1:])


def generate_policy(
    rng: random.Random,
    *,
    users: int,
    teams: int,
    namespaces: int,
    grants: int,
    robots: int | None = None,
    restrictions: int | None = None,
) -> dict[str, str]:
    """YAML texts (file name -> text) of a generated policy, split over several files."""
    spec = generate_spec(
        rng,
        users=users,
        teams=teams,
        namespaces=namespaces,
        grants=grants,
        robots=robots,
        restrictions=restrictions,
    )
    return render(spec)
