#!/bin/busybox sh
# corral test guest, PID 1. Reads its settings from the kernel command line:
#   corral.ip=ADDR/PREFIX   static address of eth0 (no address: no network)
#   corral.port=N           TCP port of the counter stream (default 7000)
#   corral.dirty=N          dirty N MiB of memory continuously (default 0: off)
#   corral.disk=vdX         write an increasing sequence to sector 0 of /dev/vdX and check it
#   corral.pattern=vdX      write a known pattern across /dev/vdX (from 1 MiB) and check it
#   corral.diskwrite=N      write about N MiB/s of random data to /dev/vda (from 1 MiB)
# Console protocol (serial): "BOOTED", then "COUNTER <seq> <uptime>" every 100 ms;
# "DISKSTART <n>", "DISKSEQ <n>", "DISKERR expected <n> got <m>", "DIRTYING <n> MiB",
# "PATPASS <pass> <blocks>", "PATERR block <i> pass <p>: <found>", "DISKWROTE <MiB> <uptime>".
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
exec </dev/console >/dev/console 2>&1
echo  # end the firmware's last line, so every line of ours starts a line

for m in $(cat /etc/corral-modules); do
    insmod "/lib/modules/$m.ko" 2>/dev/null
done

arg() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "corral.$1="*) echo "${word#*=}"; return ;; esac
    done
    echo "$2"
}
IP=$(arg ip "")
PORT=$(arg port 7000)
DIRTY=$(arg dirty 0)
DISK=$(arg disk "")
PATTERN=$(arg pattern "")
DISKWRITE=$(arg diskwrite 0)

ip link set lo up
if [ -n "$IP" ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
    ip addr add "$IP" dev eth0
    ip link set eth0 up
fi

nc -ll -p "$PORT" -e /bin/counter-stream &
[ "$DIRTY" -gt 0 ] && /bin/dirty-mem "$DIRTY" &
if [ -n "$DISK" ]; then
    i=0
    while [ ! -b "/dev/$DISK" ] && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
    /bin/disk-seq "/dev/$DISK" &
fi
if [ -n "$PATTERN" ]; then
    i=0
    while [ ! -b "/dev/$PATTERN" ] && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
    /bin/disk-pattern "/dev/$PATTERN" &
fi
if [ "$DISKWRITE" -gt 0 ]; then
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
    /bin/disk-writer /dev/vda "$DISKWRITE" &
fi

# The CPU topology as the guest kernel sees it, for tests of sockets/cores/threads.
t=/sys/devices/system/cpu
cpus=$(ls -d $t/cpu[0-9]* | wc -l)
sockets=$(cat $t/cpu[0-9]*/topology/physical_package_id | sort -u | wc -l)
cores=$(for c in $t/cpu[0-9]*/topology; do echo "$(cat $c/physical_package_id)-$(cat $c/core_id)"; done | sort -u | wc -l)
echo "TOPOLOGY cpus=$cpus sockets=$sockets cores_per_socket=$((cores / sockets)) threads_per_core=$((cpus / cores))"
echo "BOOTED ip=${IP:-none} port=$PORT dirty=$DIRTY disk=${DISK:-none}"
seq=0
while :; do
    read -r up idle </proc/uptime
    seq=$((seq + 1))
    echo "COUNTER $seq $up"
    usleep 100000
done
