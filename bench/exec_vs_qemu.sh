#!/usr/bin/env bash
# Wall time of `ktstr-host exec -- /bin/true` against raw qemu-system-x86_64 booting the same
# kernel with a one-file initramfs whose init powers off at once (the peer). Same QEMU
# machine, memory, vCPUs and quiet cmdline; runs alternate so machine noise hits both.
#   bench/exec_vs_qemu.sh [RUNS]      (default 10; needs a cached kernel: ktstr-host kernel build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10}
cargo build --release -q -p ktstr-host
HOST=target/release/ktstr-host
KERNEL=$($HOST kernel resolve --json | sed -n 's/.*"image": "\(.*\)".*/\1/p')
[ -f "$KERNEL" ] || { echo "no cached kernel: run ktstr-host kernel build" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/init.c" <<'C'
#include <sys/reboot.h>
int main(void) { reboot(RB_POWER_OFF); return 0; }
C
gcc -static -Os -o "$tmp/init" "$tmp/init.c"
(cd "$tmp" && echo init | cpio -o -H newc --quiet > raw.cpio)

raw() {
  qemu-system-x86_64 -accel tcg -cpu max -M pc -nodefaults -no-user-config -display none -vga none \
    -no-reboot -m 512M -smp 2,sockets=1,cores=2,threads=1 -kernel "$KERNEL" -initrd "$tmp/raw.cpio" \
    -append "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=1" -serial null >/dev/null 2>&1
}
ours() { $HOST exec --backend qemu --kernel "$KERNEL" -- /bin/true >/dev/null 2>&1; }
now() { date +%s.%N; }

ours # warm the initramfs cache
for i in $(seq "$RUNS"); do
  t=$(now); raw; echo "$(now) - $t" | bc >> "$tmp/raw.txt"
  t=$(now); ours; echo "$(now) - $t" | bc >> "$tmp/ours.txt"
done

stats() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "min %.3f  median %.3f  max %.3f s", a[1], m, a[NR]}'; }
median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "kernel: $KERNEL ($RUNS runs each, alternating)"
echo "raw qemu + poweroff init : $(stats "$tmp/raw.txt")"
echo "ktstr-host exec /bin/true: $(stats "$tmp/ours.txt")"
echo "ratio of medians (ours/raw): $(echo "scale=3; $(median "$tmp/ours.txt") / $(median "$tmp/raw.txt")" | bc)"
$HOST run --json --backend qemu --kernel "$KERNEL" | grep -E '"(hello_s|init_start_s|init_to_hello_ms|host_setup_ms|initrd_bytes)"'
echo "ktstr-init size: $(stat -c %s target/ktstr-init/x86_64-unknown-linux-gnu/release/ktstr-init) bytes (static)"
