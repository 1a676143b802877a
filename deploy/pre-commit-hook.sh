#!/bin/sh
# Example git pre-commit hook for a repository that keeps a registry-gateway policy.
#
#   ln -s ../../deploy/pre-commit-hook.sh .git/hooks/pre-commit     # or copy it there
#
# When the commit touches the policy directory, it validates the policy and runs its tests
# (`registry-gateway check`), refusing the commit if either fails, then prints who gains or
# loses which access compared with the last commit (`registry-gateway diff HEAD WORKTREE`).
# WORKTREE is the files on disk: changes you have not staged are included; the hook says so.
# Skip it once with `git commit --no-verify`. See docs/gitops.md.
#
# REGISTRY_GATEWAY_POLICIES: the policy directory (default: policies)
# REGISTRY_GATEWAY: the command (default: .venv/bin/registry-gateway if present, else from PATH)
set -eu

policies=${REGISTRY_GATEWAY_POLICIES:-policies}
if [ -n "${REGISTRY_GATEWAY:-}" ]; then
    gateway=$REGISTRY_GATEWAY
elif [ -x .venv/bin/registry-gateway ]; then
    gateway=.venv/bin/registry-gateway
else
    gateway=registry-gateway
fi

# Nothing to do when the commit leaves the policy alone.
if git diff --cached --quiet -- "$policies"; then
    exit 0
fi

"$gateway" check "$policies"

if ! git rev-parse --quiet --verify HEAD >/dev/null; then
    exit 0 # the first commit: nothing to compare with
fi
if ! git diff --quiet -- "$policies"; then
    echo "pre-commit: note: $policies/ has unstaged changes; the diff below includes them" >&2
fi
"$gateway" diff --policies "$policies" HEAD WORKTREE
