"""The `registry-gateway` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import __version__, collector

DEFAULT_POLICIES = "policies"

Command = Callable[[argparse.Namespace], int]


def _policies_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies",
        metavar="DIR",
        default=os.environ.get("REGISTRY_GATEWAY_POLICIES", DEFAULT_POLICIES),
        help="policy directory (env REGISTRY_GATEWAY_POLICIES; default: %(default)s)",
    )


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.policy.check import check_directory
    from gateway.policy.workloads import trusted_issuers

    try:  # workloads must name an issuer the gateway trusts (docs/oidc.md)
        issuers = trusted_issuers(os.environ.get("REGISTRY_GATEWAY_OIDC_CI_ISSUERS", ""))
    except ValueError as exc:
        print(f"registry-gateway check: REGISTRY_GATEWAY_OIDC_CI_ISSUERS: {exc}", file=sys.stderr)
        return 2
    report = check_directory(Path(args.directory or args.policies), issuers=issuers)
    out = sys.stdout
    for problem in report.problems:
        print(problem, file=out)
    print(report.summary(), file=out)
    return 0 if report.ok else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.policy.explain import explain, render_text
    from gateway.policy.load import PolicyError, load_texts
    from gateway.policy.model import Subject
    from gateway.policy.source import read_policy

    try:
        subject = Subject.parse(args.subject)
    except ValueError as exc:
        print(f"registry-gateway explain: {exc}", file=sys.stderr)
        return 2
    try:
        texts, _, revision = read_policy(Path(args.policies))  # the server's revision string
        engine_policy = load_texts(texts, revision=revision).policy
    except PolicyError as exc:
        print(
            f"registry-gateway explain: the policy in {args.policies} is invalid:", file=sys.stderr
        )
        print(exc, file=sys.stderr)
        return 1
    try:
        result = explain(engine_policy, subject, args.scope)
    except ValueError as exc:
        print(f"registry-gateway explain: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(render_text(result))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from gateway.policy.diff import diff_policies
    from gateway.policy.diffrender import render_json, render_markdown
    from gateway.policy.gitread import PolicyReadError, load_revisions

    try:
        old, new = load_revisions(
            args.rev_a, args.rev_b, policies=args.policies, repository=args.repo
        )
    except PolicyReadError as exc:
        print(f"registry-gateway diff: {exc}", file=sys.stderr)
        return exc.status
    result = diff_policies(old, new)
    print(render_json(result) if args.format == "json" else render_markdown(result))
    return 3 if args.exit_code and result.changed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry-gateway",
        description=(
            "Token authority and read-only catalog for Docker/OCI registries, "
            "with access policy kept as YAML files in git."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = sub.add_parser(
        "check",
        help="validate a policy directory and run its tests",
        description=(
            "Validate every policy file (schema, references, patterns, password hashes) and run "
            "the policy's own tests (DIR/tests/*.yaml). Prints file:line:column: error|warning "
            "lines and a summary. Exit status 0 when valid and every test passes, 1 otherwise."
        ),
    )
    check.add_argument("directory", nargs="?", metavar="DIR", help="policy directory")
    _policies_arg(check)
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser(
        "explain",
        help="show a decision and the rules behind it",
        description=(
            "For each resource and action in the scopes, print allowed or denied and every rule "
            "that decided it (file:line), including restrictions and default deny."
        ),
        epilog="example: registry-gateway explain user:carol repository:platform/api:pull,push",
    )
    explain.add_argument(
        "subject", metavar="SUBJECT", help="user:NAME, robot:NAME, workload:NAME or anonymous"
    )
    explain.add_argument("scope", nargs="+", metavar="SCOPE", help="type:name:actions")
    explain.add_argument("--format", choices=("text", "json"), default="text")
    _policies_arg(explain)
    explain.set_defaults(func=cmd_explain)

    diff = sub.add_parser(
        "diff",
        help="show who gains or loses which access between two git revisions of the policy",
        description=(
            "Read the policy directory at two git revisions (REV_B may be WORKTREE: the files on "
            "disk) and print the change in effective access: admin, user, robot, visibility and "
            "restriction changes first, then each subject's and team's actions gained and lost "
            "per namespace or pattern. A relative --policies is taken from the current directory "
            "inside the work tree, else from its root. Exit status 0 (3 with --exit-code when "
            "anything changed), 1 when a revision's policy is invalid, 2 for a bad revision."
        ),
        epilog="example: registry-gateway diff --format markdown origin/main HEAD",
    )
    diff.add_argument("rev_a", metavar="REV_A", help="the revision before, e.g. origin/main")
    diff.add_argument("rev_b", metavar="REV_B", help="the revision after, e.g. HEAD or WORKTREE")
    diff.add_argument("--format", choices=("markdown", "json"), default="markdown")
    diff.add_argument("--repo", metavar="DIR", default=".", help="a directory in the repository")
    diff.add_argument("--exit-code", action="store_true", help="exit 3 when anything changed")
    _policies_arg(diff)
    diff.set_defaults(func=cmd_diff)

    from gateway import commands
    from gateway.config import add_flags

    serve = sub.add_parser(
        "serve",
        help="serve the token endpoint (and UI) with the live policy",
        description=(
            "Serve GET/POST /auth/token for a registry, /healthz, /readyz and the JWKS. Settings "
            "come from defaults < --config FILE < REGISTRY_GATEWAY_* environment < flags. On first "
            "start an ES256 signing key and certificate are created under --data-dir. Exits with "
            "status 1 when no valid policy can be loaded."
        ),
    )
    add_flags(serve)
    serve.set_defaults(func=commands.cmd_serve)

    keys = sub.add_parser("keys", help="signing keys: bundle, rotate, list")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    bundle = keys_sub.add_parser(
        "bundle",
        help="print the PEM bundle for the registry's rootcertbundle",
        description="Print every signing certificate (creating the first key if none exists).",
    )
    bundle.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    rotate = keys_sub.add_parser(
        "rotate",
        help="add a new signing key; the newest signs, all stay in the bundle",
        description=(
            "Add a key. Put the new bundle in the registry and restart it; remove an old key "
            "file only after the longest token lifetime has passed."
        ),
    )
    rotate.add_argument("--algorithm", choices=("ES256", "RS256"))
    keys_list = keys_sub.add_parser("list", help="list keys, newest last")
    for p in (bundle, rotate, keys_list):
        add_flags(p, ("data_dir", "issuer", "key_algorithm"))
    keys.set_defaults(func=commands.cmd_keys)

    regconf = sub.add_parser(
        "registry-config",
        help="print the registry's auth.token section for these settings",
        description="Print the registry configuration (auth.token, notifications) that matches "
        "the gateway's settings, as YAML to merge into the registry's config.yml. Its "
        "signingalgorithms list the algorithms of the keys in --data-dir (or key_algorithm "
        "when there are none yet): Distribution 3.x then refuses tokens signed any other way "
        "(HS256 among them); 2.8 ignores the line.",
    )
    regconf.add_argument(
        "--rootcertbundle",
        metavar="PATH",
        default="/etc/docker/registry/registry-gateway.pem",
        help="where the registry reads the certificate bundle (default: %(default)s)",
    )
    add_flags(regconf, ("service", "issuer", "public_url", "data_dir", "key_algorithm"))
    regconf.set_defaults(func=commands.cmd_registry_config)

    from gateway import doctor

    doctor.add_parser(sub)

    hashpw = sub.add_parser(
        "hash-password",
        help="hash a password for a policy file",
        description="Read a password (without echo on a terminal, else one line of stdin) and "
        "print its hash to paste into a policy file as users.NAME.password.",
    )
    hashpw.add_argument("--algorithm", choices=("bcrypt", "argon2id"), default="bcrypt")
    hashpw.add_argument("--cost", type=int, default=12, choices=range(10, 16), metavar="10-15")
    hashpw.add_argument("--stdin", action="store_true", help="read from stdin even on a terminal")
    hashpw.set_defaults(func=commands.cmd_hash_password)

    # -- webhooks (docs/events.md) -------------------------------------------------------
    webhook = sub.add_parser("webhook", help="webhooks: send a sample event to a subscription")
    webhook_sub = webhook.add_subparsers(dest="webhook_command", metavar="ACTION", required=True)
    webhook_test = webhook_sub.add_parser(
        "test",
        help="send a sample event, signed, to the webhook NAME of the policy",
        description="Read the policy, find the webhook NAME in its webhooks: section, and send "
        'it one sample event (marked "test": true in its data), signed with its secret from '
        "its secret_env or secret_file, as the server would, with a short retry. Exit status 0 "
        "when the receiver answered 2xx, 1 when it did not, 2 for an unknown NAME.",
        epilog="example: DEPLOY_HOOK_SECRET=... registry-gateway webhook test deploy",
    )
    webhook_test.add_argument("name", metavar="NAME", help="the webhook's name in the policy")
    webhook_test.add_argument(
        "--event",
        metavar="TYPE",
        help="the sample's type, e.g. image.pushed (default: the first the webhook takes)",
    )
    add_flags(
        webhook_test,
        (
            "policies",
            "public_url",
            "registry_public",
            "registry_url",
            "webhook_timeout",
            "data_dir",
        ),
    )
    webhook.set_defaults(func=commands.cmd_webhook)

    # -- robot and personal access token secrets (docs/authentication.md) ----------------
    robot = sub.add_parser("robot", help="robot accounts: create a secret and its policy entry")
    robot_sub = robot.add_subparsers(dest="robot_command", metavar="ACTION", required=True)
    robot_create = robot_sub.add_parser(
        "create",
        help="print a new robot secret (once) and the robots: entry to commit",
        description="Make a random secret for robot NAME. The secret goes to stdout once and is "
        "never stored; the YAML entry (with its SHA-256) follows it, to paste into a policy "
        "file. Rotate by creating a new one and replacing the entry.",
    )
    robot_create.add_argument("name", metavar="NAME", help="the robot's name (its user name)")
    robot_create.add_argument("--expires", metavar="DATE", help="last valid day, YYYY-MM-DD")
    robot_create.add_argument("--description", metavar="TEXT", help="what the robot is for")
    robot.set_defaults(func=commands.cmd_robot)
    token = sub.add_parser(
        "token", help="personal access tokens: create a secret and its entry; decode a token"
    )
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    token_create = token_sub.add_parser(
        "create",
        help="print a new personal access token (once) and the users.NAME.tokens: entry",
        description="Make a personal access token for a user, to use as the password of "
        "`docker login` and other clients instead of the real one. The token goes to stdout "
        "once; the YAML entry (with its SHA-256) follows it, to paste under the user.",
    )
    token_create.add_argument("--user", required=True, metavar="NAME", help="the token's owner")
    token_create.add_argument("--name", metavar="NAME", help="the token's name (default: random)")
    token_create.add_argument("--expires", metavar="DATE", help="last valid day, YYYY-MM-DD")
    token_create.add_argument(
        "--actions", metavar="LIST", help="cap, e.g. pull or pull,push (default: no cap)"
    )
    token_create.add_argument("--description", metavar="TEXT", help="what the token is for")
    token.set_defaults(func=commands.cmd_token)
    token_decode = token_sub.add_parser(
        "decode",
        help="show the header and claims (the granted access) of a token read from stdin",
        description="Read an access token, or the token endpoint's JSON answer, from stdin and "
        "print its header and claims: subject, issuer, audience, times and the access granted. "
        "Nothing is verified: the registry checks the signature.",
        epilog="example: curl -s -u bob 'http://127.0.0.1:5001/auth/token?service=registry.local"
        "&scope=repository:bob/hello:pull,push' | registry-gateway token decode",
    )
    token_decode.add_argument("--format", choices=("text", "json"), default="text")
    token_decode.set_defaults(func=commands.cmd_token_decode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        if args.command == "serve":
            return func(args)
        # A short-lived command that builds whole policies: no cyclic collection meanwhile.
        with collector.paused():
            return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
