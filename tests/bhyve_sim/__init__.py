"""A simulator of FreeBSD's bhyve, bhyvectl, sysctl and kldstat, for testing corral's bhyve
driver on Linux, where bhyve cannot run. Test support code: never shipped as a driver.

It follows the documented behaviour (bhyve(8), bhyvectl(8), the FreeBSD-UPB migration work):
the tools accept exactly the documented flags and refuse others the way the real ones do
(message, usage, exit status); a VM's memory is a file; a running VM appears under the
host's `dev/vmm/`; checkpoints write FILE, FILE.kern and FILE.meta; a destination started
with `-R ADDRESS,PORT` receives a warm or live migration over plain TCP (specs check, memory
pages, device state, completion). The simulated guest counts in its memory and prints
`COUNTER <seq> <uptime>` on com1 like corral's test guest, so continuity is checkable.

A simulated host is a directory laid out like a FreeBSD root (usr/sbin/bhyve, sbin/sysctl,
dev/vmm, var/run/dmesg.boot, ...): corral's driver is pointed at it with `bhyve_root`.
"""
