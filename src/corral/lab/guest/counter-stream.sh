#!/bin/sh
# Streams the guest's uptime to one TCP client every 100 ms: "COUNTER <seq> <uptime>".
seq=0
while :; do
    read -r up idle </proc/uptime
    seq=$((seq + 1))
    echo "COUNTER $seq $up" || exit 0
    usleep 100000
done
