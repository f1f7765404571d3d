#!/usr/bin/env bash
# Host-side setup of the micro-VMM: process start -> first KVM_RUN (2 vCPUs, 512 MiB, cached
# kernel and initramfs), against QEMU's setup for the same kernel and memory: process start ->
# QMP greeting of a paused (-S) VM, i.e. everything up to its first guest instruction.
# Both alternate, RUNS times each. Works on any KVM (on PVM via KTSTR_KVM_ALLOW_PVM=1: setup
# does not depend on the guest making progress; the guest is stopped by --vm-timeout).
#
# The micro-VMM's total is split into the host kernel's share and our own. The host-kernel
# calls (KVM_CREATE_VM, KVM_CREATE_IRQCHIP, KVM_SET_USER_MEMORY_REGION: a property of the
# host's KVM, e.g. ~120 ms for the irqchip on a loaded PVM host, microseconds on hardware KVM)
# run on a thread of their own while the VMM copies kernel and initrd; the host kernel's share
# of the total is the time the VMM then still waits for them ("waited"; capped at the calls'
# own duration, so a VM thread that waited for a CPU does not count as host time). Our own =
# total - that share: exec, CLI, kernel lookup, initramfs manifest, plan, guest memory, kernel + initrd
# copy, tables, vCPUs, thread start. Also shown: the part before the VMM starts (process
# start -> vmm_start) and the calls' own total (mostly hidden behind the copying).
# The origin is the exec of ktstr-host, to the microsecond (KTSTR_EXEC_EPOCH=$EPOCHREALTIME),
# not /proc's process start time, which has 10 ms ticks.
#   bench/vmm_setup.sh [RUNS]   (default 20)
# KTSTR_KVM_KERNEL=bzimage|vmlinux picks the image of the cached kernel (default: vmlinux, the
# micro-VMM's default when a kernel has both).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
cargo build --release -q -p ktstr-host
HOST=target/release/ktstr-host
KERNEL=$($HOST kernel resolve --json | sed -n 's/.*"image": "\(.*\)".*/\1/p')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export KTSTR_KVM_ALLOW_PVM=1
export KTSTR_KVM_KERNEL=${KTSTR_KVM_KERNEL:-vmlinux}

# One run: "total host_kernel own before_vmm" in ms, from the VMM's phases.
ours() {
  # Output to a file, parsed afterwards: a pipeline's readers would start alongside ktstr-host
  # and compete with its setup for the CPUs.
  KTSTR_EXEC_EPOCH=$EPOCHREALTIME $HOST run --json --backend kvm --kernel "$KERNEL" --memory 512 \
    --topology 1n1l2c1t --vm-timeout 1 > "$tmp/run.json" 2>/dev/null || true
  grep '"vm_exit"' "$tmp/run.json" | grep -oE '[A-Za-z_0-9]+ [0-9.]+ms' |
    awk '{ sub(/ms$/, "", $2); t[$1] = $2 }
      END { if (!("first_kvm_run" in t)) exit
            calls = t["KVM_CREATE_VM"] + t["KVM_CREATE_IRQCHIP"] + t["KVM_SET_USER_MEMORY_REGION"]
            host = (t["waited"] < calls) ? t["waited"] : calls
            printf "%s %.3f %.3f %s %.3f\n", t["first_kvm_run"], host, t["first_kvm_run"] - host, t["vmm_start"], calls }'
}
# QEMU's setup: its QMP greeting comes once the VM is ready to run. The clock is bash's own
# $EPOCHREALTIME (no fork inside the window), and QEMU is waited for after "quit", so its exit
# (freeing 512 MiB, ending threads) never overlaps the next measured run.
qemu_setup() {
  local t0 t1
  t0=$EPOCHREALTIME
  coproc QEMU { timeout 10 qemu-system-x86_64 -accel tcg -cpu max -M pc -nodefaults -no-user-config -display none \
    -vga none -S -m 512M -smp 2 -kernel "$KERNEL" -append console=ttyS0 -qmp stdio 2>/dev/null; }
  local pid=$QEMU_PID
  read -r _greeting <&"${QEMU[0]}" || true
  t1=$EPOCHREALTIME
  echo '{"execute":"qmp_capabilities"}{"execute":"quit"}' >&"${QEMU[1]}"
  wait "$pid" || true
  echo "scale=3; (${t1/./} - ${t0/./}) / 1000" | bc
}

$HOST run --json --backend kvm --kernel "$KERNEL" --vm-timeout 1 >/dev/null 2>&1 || true # warm caches
$HOST run --json --backend kvm --kernel "$KERNEL" --vm-timeout 1 >/dev/null 2>&1 || true # (and the manifest)
for _ in $(seq "$RUNS"); do
  ours >> "$tmp/ours.txt"
  qemu_setup >> "$tmp/qemu.txt"
done
for col in 1 2 3 4 5; do cut -d' ' -f$col "$tmp/ours.txt" > "$tmp/col$col.txt"; done
stats() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "min %.1f  median %.1f  max %.1f ms (n=%d)", a[1], m, a[NR], NR}'; }
median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "kernel image: $KTSTR_KVM_KERNEL ($KERNEL)"
echo "micro-VMM process start -> first KVM_RUN:     $(stats "$tmp/col1.txt")"
echo "  host kernel's share (waited for its calls): $(stats "$tmp/col2.txt")"
echo "  our own setup (total - host share):         $(stats "$tmp/col3.txt")"
echo "  of which before the VMM (-> vmm_start):     $(stats "$tmp/col4.txt")"
echo "  host-kernel calls, overlapped with loading: $(stats "$tmp/col5.txt")"
echo "QEMU process start -> ready to run (-S):      $(stats "$tmp/qemu.txt")"
echo "ratio of medians (ours/QEMU): $(echo "scale=3; $(median "$tmp/col1.txt") / $(median "$tmp/qemu.txt")" | bc)"
