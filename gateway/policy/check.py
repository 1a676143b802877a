"""`check`: validate a policy directory and run its tests, collecting every problem."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.policy.engine import Engine
from gateway.policy.load import PolicyError, Problem, load_texts, policy_files
from gateway.policy.source import policy_revision
from gateway.policy.tests import case_files, read_cases, run_cases
from gateway.policy.workloads import check_issuers


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    tests_run: int = 0
    tests_failed: int = 0
    revision: str | None = None

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def summary(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        passed = self.tests_run - self.tests_failed
        tests = (
            f"tests: {passed} passed, {self.tests_failed} failed"
            if self.revision
            else "tests: not run (the policy is invalid)"
        )
        return (
            f"check: {verdict}: {_n(self.errors, 'error')}, {_n(self.warnings, 'warning')}; "
            f"{tests}" + (f"; revision {self.revision}" if self.revision else "")
        )


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def check_directory(
    directory: Path, *, revision: str | None = None, issuers: Mapping[str, str] | None = None
) -> Report:
    """Load, validate and test a policy; the report lists everything found. The revision is
    the one a gateway serving this directory reports (`source.policy_revision`). With
    `issuers` (the gateway's trusted CI issuers), a workload naming another is an error."""
    report = Report()
    engine = None
    tests = case_files(directory)
    try:
        texts = policy_files(directory)
        found = revision or policy_revision(directory, {**texts, **tests})
        result = load_texts(texts, revision=found)
        report.problems.extend(result.warnings)
        if issuers is not None:
            check_issuers(
                result.policy,
                issuers,
                lambda at, severity, message: report.problems.append(
                    Problem(at, severity, message)
                ),
            )
        engine = Engine(result.policy)
        report.revision = result.policy.revision
    except PolicyError as exc:
        report.problems.extend(exc.problems)
    cases, problems = read_cases(tests)
    report.problems.extend(problems)
    if engine is not None:
        failures = run_cases(engine, cases)
        report.tests_run = len(cases)
        report.tests_failed = len(failures)
        report.problems.extend(failures)
    return report
