"""CI jobs signing in with their own OIDC ID token: the token verified (gateway/auth/oidc.py),
then matched to exactly one workload of the live policy (gateway/policy/workloads.py).

The token is the password (`docker login -u ci --password-stdin`, `skopeo --creds`, the
OAuth2 password grant); the user name is ignored. A token that verifies but matches no
workload, or several, or an expired one, is refused with a message naming its issuer and
subject, and the claims that did not match: the job's author can fix the workflow or the
policy from the 401 alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.auth.oidc import OidcRefused, VerifiedToken, Verifier
from gateway.policy.engine import Engine
from gateway.policy.model import Workload
from gateway.policy.workloads import Matcher, audience_matches, issuer_url


@dataclass(frozen=True, slots=True)
class WorkloadMatch:
    """A verified token and the one workload it signs in as."""

    workload: Workload
    token: VerifiedToken


class Workloads:
    """Signs CI jobs in as the policy's workloads (see the module's text)."""

    def __init__(self, verifier: Verifier, issuers: Mapping[str, str]) -> None:
        self.verifier = verifier
        self.issuers = dict(issuers)  # issuer key -> URL (the built-ins and the setting)
        self._compiled: tuple[Engine | None, dict[str, Matcher]] = (None, {})

    @classmethod
    def for_issuers(cls, issuers: Mapping[str, str]) -> Workloads:
        """A verifier for every trusted issuer that is safe to fetch keys from."""
        return cls(Verifier(issuers.values()), issuers)

    def _matchers(self, engine: Engine) -> dict[str, Matcher]:
        """The live policy's workloads compiled once per engine."""
        if self._compiled[0] is not engine:
            workloads = engine.policy.workloads
            self._compiled = (engine, {name: Matcher.of(w) for name, w in workloads.items()})
        return self._compiled[1]

    async def sign_in(self, engine: Engine, token: str) -> WorkloadMatch:
        """The workload this token signs in as, or OidcRefused saying why not."""
        verified = await self.verifier.verify(token)
        issuer, subject = verified.issuer, verified.subject

        def refuse(why: str) -> OidcRefused:
            return OidcRefused(why, issuer, subject)

        matchers = self._matchers(engine)
        ours = [
            w
            for w in engine.policy.workloads.values()
            if issuer_url(w, self.issuers) == issuer.rstrip("/")
        ]
        if not ours:
            raise refuse("no workload of the policy names this issuer")
        heard = [w for w in ours if audience_matches(w, verified.audience)]
        if not heard:
            wanted = ", ".join(sorted({w.audience for w in ours}))
            raise refuse(f"the token's audience names no workload's (expected one of: {wanted})")
        found = [w for w in heard if matchers[w.name].matches(verified.claims)]
        if not found:
            closest = min(heard, key=lambda w: len(matchers[w.name].failed(verified.claims)))
            differ = ", ".join(matchers[closest.name].failed(verified.claims))
            raise refuse(
                f"the token matches no workload (closest: {closest.name}, whose conditions on "
                f"{differ} it does not meet)"
            )
        if len(found) > 1:
            names = ", ".join(w.name for w in found)
            raise refuse(
                f"the token matches several workloads ({names}); make their conditions exclusive"
            )
        workload = found[0]
        if workload.expired(dt.date.today()):
            raise refuse(f"workload {workload.name} expired on {workload.expires}")
        return WorkloadMatch(workload, verified)


__all__ = ["WorkloadMatch", "Workloads"]
