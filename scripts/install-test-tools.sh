#!/usr/bin/env bash
# Installs the tools the tests need that are not crates of this workspace:
# Garage, the S3-compatible object store the snapshot store's S3 tier is
# tested against (built from crates.io once, into target/tools/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

GARAGE_VERSION=2.5.0
if [ ! -x target/tools/bin/garage ] || ! target/tools/bin/garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    echo "building garage $GARAGE_VERSION into target/tools (once; several minutes)" >&2
    cargo install garage --version "$GARAGE_VERSION" --locked --quiet \
        --no-default-features --features bundled-libs,sqlite \
        --root target/tools --target-dir target/tools-build
fi
