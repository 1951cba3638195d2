#!/usr/bin/env python3
"""Collapse a QEMU process's guest RAM back into transparent huge pages (MADV_COLLAPSE).

fork() copies the page tables of the process that forks: about 2 MiB per GiB of RAM mapped with
4 KiB pages, 4 KiB per GiB mapped with 2 MiB pages. QEMU asks for THP on guest RAM, but whatever
the guest wrote while an earlier fork snapshot was streaming was copied on write one 4 KiB page at
a time and stays mapped that way until khugepaged gets to it. process_madvise(MADV_COLLAPSE)
(Linux >= 6.1; root: CAP_SYS_NICE and ptrace access) collapses such ranges synchronously, from
outside the process, while the guest runs: forksnap calls this before the halt, never in it.

Only large private anonymous mappings the kernel deems THP-eligible are advised (guest RAM: QEMU's
anonymous RAM blocks; smaller mappings are QEMU's own heap and stacks), in chunks, so a SIGTERM
stops it between two chunks.

Usage: collapse-guest-ram.py PID [MIN_MAPPING_MIB] [DEADLINE_S]
  -> one JSON line: mappings, bytes advised, bytes in chunks the kernel could not collapse
     completely (never-touched or busy 2 MiB ranges), VmPTE and AnonHugePages before and after, ms.
     Exit 0 also when nothing could be collapsed; exit 2 on a kernel older than 6.1 (no
     process_madvise(MADV_COLLAPSE)).
"""
import ctypes
import errno
import json
import os
import signal
import sys
import time

SYS_PIDFD_OPEN = 434
SYS_PROCESS_MADVISE = 440
MADV_COLLAPSE = 25
CHUNK = 64 << 20
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def eligible_mappings(pid, min_bytes):
    """(start, end, anon_huge_kib) of private anonymous rw mappings >= min_bytes, THPeligible."""
    found, current = [], None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            head = fields[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                anonymous = len(fields) < 6 or fields[5].startswith("[anon")
                current = {"start": start, "end": end, "ok": anonymous and fields[1].startswith("rw") and fields[1].endswith("p"), "huge": 0, "eligible": False}
                found.append(current)
            elif current is not None and head == "AnonHugePages:":
                current["huge"] = int(fields[1])
            elif current is not None and head == "THPeligible:":
                current["eligible"] = fields[1] == "1"
    return [m for m in found if m["ok"] and m["eligible"] and m["end"] - m["start"] >= min_bytes]


def main():
    # Dies with forksnap (a SIGKILLed forksnap must not leave it advising a VM it no longer snapshots).
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        sys.exit(1)
    release = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    if release < (6, 1):
        print(json.dumps({"supported": False, "error": f"Linux {os.uname().release}: process_madvise(MADV_COLLAPSE) needs 6.1"}))
        sys.exit(2)
    pid = int(sys.argv[1])
    min_bytes = int(sys.argv[2]) << 20 if len(sys.argv) > 2 else 64 << 20
    deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 60.0)
    started = time.monotonic()
    before = {"vmPteKiB": status_kib(pid, "VmPTE"), "anonHugeKiB": None}
    mappings = eligible_mappings(pid, min_bytes)
    before["anonHugeKiB"] = sum(m["huge"] for m in mappings)
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), f"pidfd_open({pid})")
    advised, failed, errors, timed_out = 0, 0, {}, False
    try:
        for mapping in mappings:
            # Huge pages are 2 MiB aligned: advise whole aligned 2 MiB ranges only.
            start = (mapping["start"] + (2 << 20) - 1) & ~((2 << 20) - 1)
            end = mapping["end"] & ~((2 << 20) - 1)
            while start < end:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                length = min(CHUNK, end - start)
                iov = IoVec(start, length)
                done = libc.syscall(SYS_PROCESS_MADVISE, pidfd, ctypes.byref(iov), 1, MADV_COLLAPSE, 0)
                advised += length
                if done < 0:
                    # The kernel collapses what it can and then reports the last failure of the
                    # chunk: EINVAL also for a 2 MiB range the guest never touched (nothing to
                    # collapse there), EAGAIN for a busy page. The AnonHugePages before/after tell
                    # what it achieved.
                    err = ctypes.get_errno()
                    if err == errno.ESRCH:
                        raise OSError(err, "the process is gone")
                    failed += length
                    errors[errno.errorcode.get(err, str(err))] = errors.get(errno.errorcode.get(err, str(err)), 0) + 1
                start += length
            if timed_out:
                break
    finally:
        os.close(pidfd)
    after = {"vmPteKiB": status_kib(pid, "VmPTE"), "anonHugeKiB": sum(m["huge"] for m in eligible_mappings(pid, min_bytes))}
    print(json.dumps({
        "supported": True, "mappings": len(mappings), "advisedBytes": advised, "failedBytes": failed, "errors": errors,
        "timedOut": timed_out, "before": before, "after": after, "ms": round((time.monotonic() - started) * 1000, 1),
    }))


if __name__ == "__main__":
    main()
