#!/bin/sh
# Rewrites N MiB of RAM (a tmpfs file) with random bytes, over and over, to load migration.
n=$1
mkdir -p /dirty
mount -t tmpfs -o size=$((n + 1))m dirty /dirty
dd if=/dev/urandom of=/run/random-mib bs=1048576 count=1 2>/dev/null
echo "DIRTYING $n MiB"
while :; do
    i=0
    while [ $i -lt "$n" ]; do
        dd if=/run/random-mib of=/dirty/buffer bs=1048576 count=1 seek=$i conv=notrunc 2>/dev/null
        i=$((i + 1))
    done
done
