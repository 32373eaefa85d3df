#!/bin/sh
# Writes about N MiB/s of random data to a disk (1 MiB at a time, O_DIRECT, at random MiB
# offsets from 1 MiB up to SPAN MiB), for benchmarks of a disk copied while the guest
# writes. Reports "DISKWROTE <MiB written> <uptime>" every 4 MiB.
dev=$1
rate=$2
span=${3:-512}
pause=$((1000000 / rate))
n=0
while :; do
    off=$((RANDOM % span + 1))
    dd if=/dev/urandom of="$dev" bs=1M count=1 seek="$off" oflag=direct conv=notrunc 2>/dev/null
    n=$((n + 1))
    if [ $((n % 4)) -eq 0 ]; then
        read -r up idle </proc/uptime
        echo "DISKWROTE $n $up"
    fi
    usleep "$pause"
done
