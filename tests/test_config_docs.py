"""docs/configuration.md documents every setting in gateway.config.FIELDS."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import FIELDS, Field, env_name, flag_name

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def docs() -> str:
    return DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize("field", FIELDS, ids=[f.name for f in FIELDS])
def test_setting_is_documented(docs: str, field: Field) -> None:
    name = field.name
    missing = [text for text in (f"`{name}`", env_name(name)) if text not in docs]
    assert not missing, f"docs/configuration.md does not mention {', '.join(missing)}"


FLAGGED = [f for f in FIELDS if f.flag]


@pytest.mark.parametrize("field", FLAGGED, ids=[f.name for f in FLAGGED])
def test_flag_is_documented(docs: str, field: Field) -> None:
    flag = flag_name(field.name)
    assert f"`{flag}`" in docs, f"docs/configuration.md does not mention the flag {flag}"


def test_secrets_are_documented_without_a_flag(docs: str) -> None:
    for field in FIELDS:
        if not field.flag:
            assert f"`{flag_name(field.name)}`" not in docs, (
                f"{field.name} is a secret and has no flag; the docs must not show one"
            )
