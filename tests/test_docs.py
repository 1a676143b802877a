"""docs/policy.md documents every key the policy loader accepts, and its examples are valid."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

import gateway.policy.readfile
from gateway.policy import tests as policy_tests
from gateway.policy.engine import Engine
from gateway.policy.load import PolicyError, load_texts
from gateway.policy.model import REPOSITORY_ACTIONS, Role, Visibility
from gateway.policy.readfile import SECTIONS

DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"
COMPLETE_EXAMPLE = "# complete example"
_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SECTION_LINE = re.compile(rf"^({'|'.join(SECTIONS)}):")


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _literal_strings(node: ast.expr | None) -> set[str]:
    """The strings of a tuple, list or set literal, or the keys of a dict literal."""
    items: list[ast.expr | None] = []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = list(node.elts)
    elif isinstance(node, ast.Dict):
        items = list(node.keys)
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}


def accepted_keys() -> set[str]:
    """Every key readfile.py (the policy file reader) accepts, read from its source.

    The allowed-key tuples are literals: `allowed = (...)` assignments, tuples passed as the
    `allowed` argument of `FileReader` methods (`self.fields(...)`, `self.read_rules(...)`), and
    the module constants SECTIONS and _ROLE_KEYS.
    """
    source = Path(gateway.policy.readfile.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    builder = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FileReader")
    params = {
        f.name: [a.arg for a in f.args.args[1:]]  # without self
        for f in builder.body
        if isinstance(f, ast.FunctionDef)
    }
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if names & {"allowed", "SECTIONS", "_ROLE_KEYS"}:
                keys |= _literal_strings(node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "self"
            and "allowed" in params.get(node.func.attr, [])
        ):
            position = params[node.func.attr].index("allowed")
            if position < len(node.args):
                keys |= _literal_strings(node.args[position])
            keys |= {
                k for kw in node.keywords if kw.arg == "allowed" for k in _literal_strings(kw.value)
            }
    return keys


def reported_keys() -> set[str]:
    """The keys the loader lists as expected when it meets an unknown key in every context."""
    text = """\
        zzz: 1
        settings: {zzz: 1}
        users: {u: {zzz: 1, tokens: {t: {zzz: 1}}}}
        robots: {r: {zzz: 1}}
        teams: {t: {zzz: 1, ldap_groups: [{zzz: 1}]}}
        namespaces: {n: {zzz: 1}}
        grants: [{zzz: 1}]
        restrictions: [{zzz: 1}]
        """
    with pytest.raises(PolicyError) as info:
        load_texts({"p.yaml": text.replace("        ", "")})
    keys: set[str] = set()
    for problem in info.value.problems:
        match = re.search(r"\(expected: ([^)]*)\)", problem.message)
        if match:
            keys.update(match.group(1).split(", "))
    return keys


def yaml_blocks() -> list[str]:
    return _FENCE.findall(_doc())


def _first_line(block: str) -> str:
    lines = (line for line in block.splitlines() if line.strip())
    return next((line for line in lines if not line.startswith("#")), "")


def policy_blocks() -> list[str]:
    """The yaml examples that start with a top-level policy key (comment lines aside)."""
    return [b for b in yaml_blocks() if _SECTION_LINE.match(_first_line(b))]


def test_key_extraction_finds_what_the_loader_reports() -> None:
    keys = accepted_keys()
    assert set(SECTIONS) <= keys
    assert reported_keys() <= keys, "accepted_keys() misses keys the loader accepts"


def test_every_policy_key_is_documented() -> None:
    doc = _doc()
    keys = accepted_keys() | set(policy_tests._FIELDS)
    missing = sorted(key for key in keys if f"`{key}`" not in doc)
    assert not missing, f"docs/policy.md does not document: {', '.join(missing)}"


def test_every_value_of_roles_visibilities_and_actions_is_documented() -> None:
    doc = _doc()
    values = {*REPOSITORY_ACTIONS, *(r.value for r in Role), *(v.value for v in Visibility)}
    missing = sorted(value for value in values if f"`{value}`" not in doc)
    assert not missing, f"docs/policy.md does not document: {', '.join(missing)}"


@pytest.mark.parametrize("block", policy_blocks(), ids=lambda b: _first_line(b)[:30])
def test_policy_examples_are_valid_yaml_with_known_keys(block: str) -> None:
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    assert set(data) <= set(SECTIONS)
    try:
        load_texts({"example.yaml": block})
    except PolicyError as exc:
        # A fragment may refer to users or teams defined elsewhere, but every key must exist.
        wrong = [
            str(p)
            for p in exc.problems
            if p.message.startswith(("unknown key", "unknown top-level key", "invalid YAML"))
        ]
        assert not wrong, "\n".join(wrong)


def test_there_are_examples_for_every_section() -> None:
    shown = {_first_line(b).partition(":")[0] for b in policy_blocks()}
    assert shown == set(SECTIONS)


def _complete_example() -> str:
    blocks = [b for b in yaml_blocks() if b.startswith(COMPLETE_EXAMPLE)]
    assert len(blocks) == 1, f"expected one yaml block starting with {COMPLETE_EXAMPLE!r}"
    return blocks[0]


def test_complete_example_loads_without_errors() -> None:
    try:
        result = load_texts({"complete-example.yaml": _complete_example()})
    except PolicyError as exc:
        pytest.fail("\n".join(str(p) for p in exc.problems))
    assert set(result.policy.users) >= {"alice", "bob"}


def test_complete_example_uses_every_key() -> None:
    data = yaml.safe_load(_complete_example())
    used: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            used.update(str(k) for k in value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    missing = sorted(accepted_keys() - used)
    assert not missing, f"the complete example does not show: {', '.join(missing)}"


def test_policy_test_examples_pass_against_the_complete_example() -> None:
    blocks = {
        f"example-{i}.yaml": b
        for i, b in enumerate(yaml_blocks())
        if _first_line(b).startswith(("- as:", "- description:"))
    }
    assert blocks, "docs/policy.md shows no policy test file"
    cases, problems = policy_tests.read_cases(blocks)
    assert not problems, "\n".join(map(str, problems))
    engine = Engine(load_texts({"complete-example.yaml": _complete_example()}).policy)
    failures = policy_tests.run_cases(engine, cases)
    assert not failures, "\n".join(map(str, failures))
