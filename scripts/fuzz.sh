#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes for a bounded time (not in CI):
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 300; the targets default to all of
# fuzz/fuzz_targets. Needs the nightly toolchain (`rustup toolchain install
# nightly`); installs cargo-fuzz if it is missing. Each target runs at the
# lowest CPU priority, one after the other, growing fuzz/corpus/<target>
# (minimise it with `cargo +nightly fuzz cmin <target>` before committing).
# A crash stops the script and leaves its input in
# fuzz/artifacts/<target>/: fix the parser, copy the input to
# fuzz/regressions/<target>/ (the replay test runs it on stable:
# `cargo test -p thaw-fuzz-targets`), and run again.
#
# Environment: FUZZ_SANITIZER (default none: the parsers are safe Rust
# and run several times faster without AddressSanitizer; `address` to use
# it), FUZZ_TARGET_DIR (the build directory, default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
cd fuzz
for t in "${targets[@]}"; do
    echo "== $t: ${seconds}s" >&2
    mkdir -p "corpus/$t"
    # -timeout: one input taking more than 10 s is a finding (a slow
    # input); -rss_limit_mb: so is one needing more than 2 GiB.
    nice -n 19 cargo +nightly fuzz run -s "$sanitizer" --target-dir "$target_dir" "$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
