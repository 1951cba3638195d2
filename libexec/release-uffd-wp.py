#!/usr/bin/env python3
"""Release userfaultfd write-protection in a QEMU process whose background snapshot failed.

QEMU 7.2's background-snapshot write-protects guest RAM with userfaultfd and copies each page out
before letting the guest write it. If the migration channel breaks, the migration thread stops
serving those faults while the pages are still protected: every vCPU (and the main loop, waiting for
the lock a vCPU holds) blocks in handle_userfault forever. This duplicates the process's userfaultfd
(pidfd_getfd, root) and clears write-protection on every range registered for it (smaps flag "uw"),
which wakes the blocked threads, and unregisters the ranges (QEMU 7.2 only does that on success);
QEMU then finishes failing the migration and cleans up itself.

Usage: release-uffd-wp.py PID   -> prints a JSON summary; exit 0 on success (also when nothing was protected).
"""
import ctypes
import fcntl
import json
import os
import struct
import sys

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
# _IOWR(0xAA, 0x06, struct uffdio_writeprotect { u64 start; u64 len; u64 mode; })
UFFDIO_WRITEPROTECT = 0xC018AA06
# _IOR(0xAA, 0x01, struct uffdio_range { u64 start; u64 len; })
UFFDIO_UNREGISTER = 0x8010AA01


def protected_ranges(pid):
    ranges, current = [], None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                current = (start, end)
            elif head == "VmFlags:" and current and "uw" in line.split()[1:]:
                ranges.append(current)
    return ranges


def main():
    pid = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]":
                fds.append(int(fd))
        except OSError:
            pass
    ranges = protected_ranges(pid)
    released = 0
    if fds and ranges:
        pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
        if pidfd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_open failed")
        for fd in fds:
            local = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            if local < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd failed")
            try:
                for start, end in ranges:
                    try:
                        fcntl.ioctl(local, UFFDIO_WRITEPROTECT, bytearray(struct.pack("QQQ", start, end - start, 0)))
                        # QEMU never unregisters after a failed background snapshot either: do it, so
                        # that a later background snapshot can register the RAM again.
                        fcntl.ioctl(local, UFFDIO_UNREGISTER, bytearray(struct.pack("QQ", start, end - start)))
                        released += 1
                    except OSError:
                        pass  # range registered with another userfaultfd of the process
            finally:
                os.close(local)
        os.close(pidfd)
    print(json.dumps({"pid": pid, "userfaultfds": fds, "protectedRanges": len(ranges), "released": released}))


if __name__ == "__main__":
    main()
