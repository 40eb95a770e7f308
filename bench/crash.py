#!/usr/bin/env python3
"""Crash under load: kill -9 the server while it accepts and delivers, restart it on the same
SQLite file, and measure how long until everything accepted is sent, and how many messages the
sink received twice (delivery is at least once: only what was on the wire at the kill may be).

    python3 bench/crash.py [N]     # after bash bench/run.sh has built the binaries
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as b  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
scratch = tempfile.mkdtemp(prefix="mailroom-crash-")
db_url = f"sqlite://{scratch}/mailroom.db"
sink = b.Sink()
try:
    m = b.Mailroom(db_url, delivery=True)
    m.use_sink()
    load = subprocess.Popen([b.LOADGEN, "--url", m.base, "--token", m.token, "-n", str(n), "-c", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b.wait(lambda: sink.count() >= n // 4, 120, "a quarter to be delivered")
    m.proc.kill()
    m.proc.wait()
    killed_at = time.time()
    load.kill()
    load.wait()
    at_kill = sink.count()
    m2 = b.Mailroom(db_url, delivery=True)
    restarted = time.time()
    stats = m2.call("GET", "/notifications/stats")["counts"]
    total = sum(stats.values())
    in_flight = stats.get("sending", 0)
    b.wait(lambda: m2.sent() >= total, 300, "everything accepted to be sent")
    drained = time.time()
    time.sleep(1)
    received = sink.count()
    print(f"accepted before the kill: {total:,}; sink had {at_kill:,} at the kill; "
          f"'sending' at restart: {in_flight:,}")
    print(f"restart to ready: {restarted - killed_at:.2f} s; restart to all {total:,} sent: "
          f"{drained - restarted:.2f} s")
    print(f"sink received {received:,} for {total:,} notifications: {received - total:,} duplicates")
    m2.stop()
finally:
    sink.stop()
    shutil.rmtree(scratch, ignore_errors=True)
