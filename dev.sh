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

host() { target/release/ktstr-host "$@"; }

build_host() {
  step "building ktstr-host (release)"
  cargo build --release --locked -p ktstr-host
}

case "${1:-}" in
  run)
    shift
    ensure_packages
    ensure_rust
    build_host
    step "ktstr-host run $*"
    exec target/release/ktstr-host run "$@"
    ;;
  test)
    shift
    ensure_packages
    ensure_rust
    step "cargo fmt --check"
    cargo fmt --all --check
    step "cargo clippy (warnings are errors)"
    cargo clippy --locked --workspace --all-targets -- -D warnings
    build_host
    step "test kernels from the distro source (cached after the first build)"
    host kernel build
    step "in-tree sched_ext schedulers for the test kernel (cached after the first build)"
    host sched build
    step "outer kernel of the KVM-in-QEMU tier (kvm-host flavour)"
    host kernel build --flavour kvm-host
    step "cargo test (unit and integration tests)"
    cargo test --locked --workspace "$@"
    ;;
  *)
    echo "usage: $0 run [ARGS...] | test [CARGO TEST ARGS...]" >&2
    exit 2
    ;;
esac
