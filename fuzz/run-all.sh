#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, from the seed corpus.
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. Results go to docs/RELIABILITY.md by hand.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
for t in hello reply framing descriptor pipe_name ring; do
    mkdir -p "corpus/$t"
    echo "== $t for ${secs}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -n 12
done
