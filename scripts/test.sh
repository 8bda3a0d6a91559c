#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs every
# test of the workspace. Needs root (sandboxes use namespaces, cgroups, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

# The real AWS SDK for Python and the AWS CLI, used by the Lambda API
# compatibility and authentication tests (installed together, so that pip
# picks a botocore both accept).
if ! python3 -c 'import boto3, awscli' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'boto3>=1.34' awscli
fi

# Garage, for the snapshot store's S3 tier.
./scripts/install-test-tools.sh

# The end-to-end tests start `thaw serve`, which runs `thaw-init`: build both.
cargo build --workspace --bins
cargo test --workspace "$@"
