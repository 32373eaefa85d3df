#!/bin/sh
# Writes a known pattern across a disk, pass after pass, and checks every block of it.
# Block i is the 4 KiB at i MiB (from 1 MiB to the end; sector 0 belongs to disk-seq) and
# holds the line "PAT <i> <pass>" repeated, written with O_DIRECT. Before a block is
# rewritten it is read back (O_DIRECT) and must hold the previous pass: a lost or torn write,
# or a block a copy missed, shows as "PATERR block <i> pass <p>: <first bytes found>".
# "PATPASS <p> <blocks>" ends each full pass. Size: the block device's, or MIB (a file).
dev=$1
sectors=$(cat "/sys/class/block/${dev##*/}/size" 2>/dev/null)
if [ -n "$sectors" ]; then blocks=$((sectors / 2048)); else blocks=$2; fi
block() { yes "PAT $1 $2" | head -c 4096; }
pass=0
while :; do
    pass=$((pass + 1))
    i=1
    while [ $i -lt "$blocks" ]; do
        if [ $pass -gt 1 ]; then
            got=$(dd if="$dev" bs=4096 skip=$((i * 256)) count=1 iflag=direct 2>/dev/null)
            if [ "$got" != "$(block $i $((pass - 1)))" ]; then
                echo "PATERR block $i pass $((pass - 1)): $(printf '%s' "$got" | head -c 24)"
            fi
        fi
        block $i $pass | dd of="$dev" bs=4096 seek=$((i * 256)) count=1 oflag=direct conv=notrunc 2>/dev/null
        i=$((i + 1))
    done
    echo "PATPASS $pass $((blocks - 1))"
done
