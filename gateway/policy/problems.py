"""What is wrong with a policy: a `Problem` at file:line:column, and `PolicyError`, which
lists every problem of a policy that cannot be used."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.model import Location


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy, where it is, and how bad."""

    location: Location
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; `problems` lists every error (and warning) found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid policy")
