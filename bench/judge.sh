#!/usr/bin/env bash
# Host-side cost of a scenario run's telemetry: decode the frames of a 60 s run (16 cpu_spin
# workers on 4 CPUs, a sample every 100 ms), build the run record and judge it; also write
# record.json, read it back and judge again. Min/median/max over REPS repetitions.
#   bench/judge.sh [REPS] [SECONDS]   (default 21 60)
# Goal (issue 6): decode + judge of a 60 s record < 50 ms. Results: bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ktstr-host --example judge_bench
exec target/release/examples/judge_bench "$@"
