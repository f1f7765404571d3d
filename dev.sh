#!/usr/bin/env bash
# The whole set-up of a ktstr checkout on a fresh Debian 12 machine, in two commands:
#   ./dev.sh run  [ARGS...]   install what is missing, build, run `ktstr-host run` on defaults
#   ./dev.sh test             install what is missing, build the test kernels, run every test
# Idempotent: packages are installed only when missing, kernels are built once and cached.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: kernel build deps, the distro kernel source (the offline default),
# QEMU (the backend that runs everywhere), clang/llvm 19 (BPF schedulers).
PACKAGES=(
  build-essential bc flex bison libelf-dev zlib1g-dev libssl-dev dwarves perl
  cpio xz-utils lz4 zstd git ca-certificates busybox-static
  linux-source-6.12 qemu-system-x86 clang-19 llvm-19
)

step() { printf '\n==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    step "system packages: all ${#PACKAGES[@]} present"
    return
  fi
  step "installing missing packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "error: cargo not found. ktstr needs Rust >= 1.89 (edition 2024): install it with rustup" >&2
    echo "       (https://rustup.rs), then run this command again." >&2
    exit 1
  }
  step "rust: $(cargo --version)"
}

TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
host() { "$TARGET_DIR/release/ktstr-host" "$@"; }

build_host() {
  step "building ktstr-host (release)"
  cargo build --release --locked -p ktstr-host
}

# Wall time of each stage of `test`, printed at the end (also when a stage fails).
STAGES=()
now() { date +%s.%N; }
# stage NAME CMD...: runs CMD as a timed stage, in a subshell with `set -e` in force (a
# function called after `||` would run with it ignored); its exit status is the stage's.
stage() {
  local name=$1 t0 rc errexit=$-
  shift
  step "$name"
  t0=$(now)
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  [[ $errexit != *e* ]] || set -e
  STAGES+=("$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')|$name|$([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc)")")
  return "$rc"
}

# The cargo test output (also shown in full as it runs) and the skip log the tests append to
# (see tests/common/skip.rs).
TEST_LOG="$TARGET_DIR/ktstr-cargo-test.log"
export KTSTR_SKIP_LOG="$TARGET_DIR/ktstr-skips.log"

# One row per test target from cargo's `Running` and `test result:` lines: libtest's wall
# time and its counts; a target that printed no result (it crashed) says so.
target_table() {
  [ -s "$TEST_LOG" ] || return 0
  awk '
    function flush() { if (name != "") printf "  %-34s %9s  %s\n", name, "-", "NO RESULT (crashed or killed)"; name = "" }
    /^ +Running .*\(.*\)$/ {
      flush(); bin = $NF; gsub(/[()]/, "", bin); sub(/.*\//, "", bin); sub(/-[0-9a-f]+$/, "", bin)
      name = ($2 == "unittests") ? bin " " $3 : bin; next
    }
    /^ +Doc-tests / { flush(); name = "doc-tests " $2; next }
    /^test result: / && name != "" {
      status = $3; sub(/\.$/, "", status); secs = $NF; sub(/s$/, "", secs)
      printf "  %-34s %8.1fs  %-6s %s passed, %s failed, %s ignored\n", name, secs, status, $4, $6, $8
      name = ""
    }
    END { flush() }' "$TEST_LOG"
}

print_times() {
  [ ${#STAGES[@]} -gt 0 ] || return 0
  {
    printf '\n==> time per stage\n'
    local row
    for row in "${STAGES[@]}"; do
      IFS='|' read -r secs name status <<<"$row"
      printf '  %-60s %8ss  %s\n' "$name" "$secs" "$status"
    done
    if [ -s "$TEST_LOG" ]; then
      printf '\n==> time per test target (libtest wall time; full output in %s)\n' "$TEST_LOG"
      target_table
    fi
  } >&2
}

# Skipped tests (and rows exempted as known bugs) with their reasons. Under CI=true a skip is
# an error unless its reason is "needs hardware KVM": every other tier (QEMU TCG, KVM inside
# QEMU TCG, kernel builds) can run on the machines CI uses, so skipping it would hide it.
skip_summary() {
  if [ ! -s "$KTSTR_SKIP_LOG" ]; then
    step "skipped tests: none"
    return 0
  fi
  step "skipped tests and known bugs (from $KTSTR_SKIP_LOG)"
  sort "$KTSTR_SKIP_LOG" | sed 's/^/  /' >&2
  [ "${CI:-}" = true ] || return 0
  local hidden
  hidden=$(awk '{ r = substr($0, index($0, ": ") + 2) } r !~ /^(needs hardware KVM|known bug: )/' "$KTSTR_SKIP_LOG")
  if [ -n "$hidden" ]; then
    echo "error: CI=true and tests were skipped that can run on this kind of machine (only" >&2
    echo "       \"needs hardware KVM\" may be skipped here):" >&2
    printf '%s\n' "$hidden" | sed 's/^/         /' >&2
    return 1
  fi
}

# cargo test of every target, not stopping at the first failing one; the status still fails.
cargo_test() {
  : >"$KTSTR_SKIP_LOG"
  cargo test --locked --workspace --no-fail-fast "$@" 2>&1 | tee "$TEST_LOG"
}

case "${1:-}" in
  run)
    shift
    ensure_packages
    ensure_rust
    build_host
    step "ktstr-host run $*"
    exec "$TARGET_DIR/release/ktstr-host" run "$@"
    ;;
  test)
    shift
    trap print_times EXIT
    stage "system packages" ensure_packages
    ensure_rust
    stage "cargo fmt --check" cargo fmt --all --check
    stage "cargo clippy (warnings are errors)" cargo clippy --locked --workspace --all-targets -- -D warnings
    stage "building ktstr-host (release)" cargo build --release --locked -p ktstr-host
    stage "kernel build: minimal (distro source, cached after the first build)" host kernel build
    stage "in-tree sched_ext schedulers for the test kernel (cached)" host sched build
    stage "kernel build: kvm-host (outer kernel of the KVM-in-QEMU tier, cached)" host kernel build --flavour kvm-host
    stage "cargo test: build the test targets" cargo test --locked --workspace --no-run "$@"
    set +e
    stage "cargo test (unit and integration tests, --no-fail-fast)" cargo_test "$@"
    rc=$?
    skip_summary || rc=1
    set -e
    exit "$rc"
    ;;
  *)
    echo "usage: $0 run [ARGS...] | test [CARGO TEST ARGS...]" >&2
    exit 2
    ;;
esac
