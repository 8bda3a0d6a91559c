#!/usr/bin/env bash
# The SIGKILL campaign (docs/reliability.md, "A killed daemon leaves nothing
# behind"): ITERATIONS rounds (default 200) of deploys, updates, snapshot
# builds, bursts and Event invocations against a real `thaw serve`, each
# ended by a SIGKILL of the daemon or of one of its sandbox processes and a
# restart on the same data directory, checking after every restart that no
# process, cgroup, mount or temporary file of the old daemon is left, that
# every function is consistent and answers right, and at the end that every
# accepted Event invocation ran to its end. Prints the figures at the end.
#
# Needs root and the built binaries; not run in CI (about 8 s per round).
#   scripts/kill-campaign.sh [ITERATIONS]        (THAW_KILL_SEED=N to vary)
set -euo pipefail
iterations="${1:-200}"
cd "$(dirname "$0")/.."
cargo build --workspace --bins
THAW_KILL_ITERATIONS="$iterations" THAW_KILL_SEED="${THAW_KILL_SEED:-32429}" \
    cargo test -p thaw-cli --test kill_campaign -- --nocapture --test-threads 1
