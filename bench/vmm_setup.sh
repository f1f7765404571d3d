#!/usr/bin/env bash
# Host-side setup of the micro-VMM: process start -> first KVM_RUN (2 vCPUs, 512 MiB, cached
# kernel and initramfs), against QEMU's setup for the same kernel and memory: process start ->
# QMP greeting of a paused (-S) VM, i.e. everything up to its first guest instruction.
# Both alternate, RUNS times each. Works on any KVM (on PVM via KTSTR_KVM_ALLOW_PVM=1: setup
# does not depend on the guest making progress; the guest is stopped by --vm-timeout).
#   bench/vmm_setup.sh [RUNS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
cargo build --release -q -p ktstr-host
HOST=target/release/ktstr-host
KERNEL=$($HOST kernel resolve --json | sed -n 's/.*"image": "\(.*\)".*/\1/p')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export KTSTR_KVM_ALLOW_PVM=1

ours() {
  { $HOST run --json --backend kvm --kernel "$KERNEL" --memory 512 --topology 1n1l2c1t --vm-timeout 1 2>/dev/null || true; } |
    sed -n 's/.*first_kvm_run \([0-9.]*\)ms.*/\1/p'
}
qemu_setup() {
  local t0 t1
  t0=$(date +%s%N)
  { read -r _greeting; t1=$(date +%s%N); echo '{"execute":"qmp_capabilities"}{"execute":"quit"}'; } < <(
    timeout 10 qemu-system-x86_64 -accel tcg -cpu max -M pc -nodefaults -no-user-config -display none -vga none -S \
      -m 512M -smp 2 -kernel "$KERNEL" -append console=ttyS0 -qmp stdio 2>/dev/null) > /dev/null || true
  echo "scale=3; ($t1 - $t0) / 1000000" | bc
}

$HOST run --json --backend kvm --kernel "$KERNEL" --vm-timeout 1 >/dev/null 2>&1 || true # warm caches
for _ in $(seq "$RUNS"); do
  ours >> "$tmp/ours.txt"
  qemu_setup >> "$tmp/qemu.txt"
done
stats() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "min %.1f  median %.1f  max %.1f ms (n=%d)", a[1], m, a[NR], NR}'; }
median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "micro-VMM process start -> first KVM_RUN: $(stats "$tmp/ours.txt")"
echo "QEMU process start -> ready to run (-S):  $(stats "$tmp/qemu.txt")"
echo "ratio of medians (ours/QEMU): $(echo "scale=3; $(median "$tmp/ours.txt") / $(median "$tmp/qemu.txt")" | bc)"
