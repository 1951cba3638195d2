#!/usr/bin/python3
# Measures how long the guest is paused by libvirt's virDomainSuspend+Resume against QMP stop+cont
# through the monitor passthrough (QEMU's STOP/RESUME timestamps), interleaved in one run.
# Usage: /usr/bin/python3 scripts/bench-libvirt-halt.py DOMAIN (a running libvirt domain; default fsnap-lv1)
import random
import statistics
import sys
import threading
import time

import libvirt
import libvirt_qemu

libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open('qemu:///system')
dom = conn.lookupByName(sys.argv[1] if len(sys.argv) > 1 else 'fsnap-lv1')
events = []
def cb(c, d, ev, secs, usecs, details, o):
    if ev in ('STOP', 'RESUME'): events.append((ev, secs + usecs / 1e6))
libvirt_qemu.qemuMonitorEventRegister(conn, dom, None, cb, None, 0)
threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)], daemon=True).start()
time.sleep(20)  # let the guest boot
res = {'libvirt': [], 'qmp': []}
order = ['libvirt', 'qmp'] * 15; random.shuffle(order)
for how in order:
    events.clear()
    t0 = time.monotonic()
    if how == 'libvirt':
        dom.suspend(); dom.resume()
    else:
        libvirt_qemu.qemuMonitorCommand(dom, '{"execute":"stop"}', 0); libvirt_qemu.qemuMonitorCommand(dom, '{"execute":"cont"}', 0)
    wall = (time.monotonic() - t0) * 1000
    for _ in range(50):
        if len(events) >= 2: break
        time.sleep(0.01)
    stop = next(t for e, t in events if e == 'STOP'); resume = next(t for e, t in events if e == 'RESUME')
    res[how].append(((resume - stop) * 1000, wall))
    time.sleep(0.3)
for how, v in res.items():
    d = [x[0] for x in v]; w = [x[1] for x in v]
    print(how, 'downtime ms median %.2f (min %.2f max %.2f), call round trip median %.2f' % (statistics.median(d), min(d), max(d), statistics.median(w)))
