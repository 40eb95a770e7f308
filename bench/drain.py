#!/usr/bin/env python3
"""Delivery alone: fill a queue with delivery off, restart with it on, and time the drain to
smtp-sink. With PERF=file, records `perf record -g` of the server while it drains.

    python3 bench/drain.py [N] [DATABASE_URL]     # after bash bench/run.sh has built the binaries

EXTRA='{"MAILROOM_DELIVERY_CONCURRENCY": "32"}' overrides the server's variables.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as b  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
db_url = sys.argv[2] if len(sys.argv) > 2 else None
perf = os.environ.get("PERF")
extra = json.loads(os.environ.get("EXTRA", "{}"))
scratch = None
if db_url is None:
    scratch = tempfile.mkdtemp(prefix="mailroom-drain-")
    db_url = f"sqlite://{scratch}/mailroom.db"
sink = b.Sink()
try:
    m = b.Mailroom(db_url, delivery=False, extra=extra)
    m.use_sink()
    r = m.load("-n", n, "-c", 64)
    print("accepted", round(r["notifications_per_second"]), "/s", flush=True)
    m.stop()
    m = b.Mailroom(db_url, delivery=True, extra=extra)
    start = time.time()
    recorder = None
    if perf:
        recorder = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(m.proc.pid), "-o", perf],
                                    stderr=subprocess.DEVNULL)
    b.wait(lambda: m.sent() >= n, 600, "the queue to drain")
    seconds = time.time() - start
    if recorder:
        recorder.send_signal(2)
        recorder.wait()
    time.sleep(0.5)
    print(f"drained {n / seconds:,.0f} msg/s ({seconds:.2f} s; sink counted {sink.count()})", flush=True)
    m.stop()
finally:
    sink.stop()
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
