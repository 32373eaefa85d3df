#!/bin/sh
# Writes an increasing sequence to sector 0 of a disk, bypassing the page cache, and before
# each write checks that the disk still holds the last value written. A lost write shows as
# "DISKERR expected <n> got <m>". Continues from the value already on the disk.
dev=$1
read_sector() {
    v=$(dd if="$dev" bs=512 count=1 iflag=direct 2>/dev/null | head -n 1 | tr -dc 0-9)
    echo "${v:-0}"
}
n=$(read_sector)
echo "DISKSTART $n"
while :; do
    got=$(read_sector)
    [ "$got" = "$n" ] || echo "DISKERR expected $n got $got"
    n=$((n + 1))
    printf '%-511s\n' "$n" | dd of="$dev" bs=512 count=1 oflag=direct conv=notrunc 2>/dev/null
    [ $((n % 20)) -eq 0 ] && echo "DISKSEQ $n"
    usleep 50000
done
