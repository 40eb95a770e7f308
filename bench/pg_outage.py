#!/usr/bin/env python3
"""PostgreSQL away for longer than the lease, with three instances delivering to a server that
takes 2 s per message: how many messages arrive twice (the outside review saw 18 of 600 in one
of four runs). Stops and starts this machine's PostgreSQL cluster: run it alone, not beside tests.

    python3 bench/pg_outage.py BINARY [N] [OUTAGE_SECONDS]

Needs Debian's python3-aiosmtpd (run with /usr/bin/python3 for the sink) and pg_ctlcluster.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

BIN = os.path.abspath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 600
OUTAGE = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
ADMIN_URL = os.environ.get("MAILROOM_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CLUSTER = sorted(os.listdir("/etc/postgresql"))[0]

SINK = r'''
import asyncio, sys, time
from aiosmtpd.controller import Controller
log = open(sys.argv[2], "a", buffering=1)
class Slow:
    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(2)
        for line in envelope.content.decode(errors="replace").splitlines():
            if line.lower().startswith("message-id:"):
                log.write(line.split(":", 1)[1].strip() + "\n")
        return "250 OK"
c = Controller(Slow(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
while True:
    time.sleep(3600)
'''


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def psql(sql, db="postgres"):
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qAtc", sql], check=True,
                   stdout=subprocess.PIPE)


def call(base, token, method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as res:
        return json.loads(res.read())


def wait(cond, limit, what):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    scratch = tempfile.mkdtemp(prefix="mailroom-pg-outage-")
    name = "mailroom_outage_" + uuid.uuid4().hex[:8]
    psql(f"CREATE DATABASE {name}")
    db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    smtp_port = free_port()
    ids_log = os.path.join(scratch, "ids.log")
    sink = subprocess.Popen(["/usr/bin/python3", "-c", SINK, str(smtp_port), ids_log])
    secret = "s" * 40
    procs, bases = [], []
    try:
        for i in range(3):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
            # One JWT secret and one encryption key for the fleet, as a deployment would share them.
            env.update({"MAILROOM_BIND": f"127.0.0.1:{port}", "MAILROOM_DATABASE_URL": db_url,
                        "MAILROOM_DATA_DIR": os.path.join(scratch, str(i)), "MAILROOM_JWT_SECRET": secret,
                        "MAILROOM_SECRET_KEY": "ab" * 32, "MAILROOM_DELIVERY_CONCURRENCY": "8",
                        "RUST_LOG": "warn"})
            os.makedirs(env["MAILROOM_DATA_DIR"])
            procs.append(subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(os.path.join(scratch, f"serve{i}.log"), "w")))
            base = f"http://127.0.0.1:{port}"
            wait(lambda: urllib.request.urlopen(base + "/readyz", timeout=1).status == 200, 60, "readiness")
            bases.append(base)
            if i == 0:
                token = subprocess.run([BIN, "token", "--sub", "bench", "--ttl", "2h", "--scope",
                                        "settings:write notifications:send notifications:read"],
                                       env=env, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
                call(base, token, "PUT", "/settings/smtp", {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                                                            "from_address": "bench@example.com", "timeout_seconds": 10})
        for k in range(N):
            call(bases[k % 3], token, "POST", "/notifications",
                 {"event": "user_deactivated", "to": f"user{k}@example.com"})
        accepted_at = time.time()
        lines = lambda: open(ids_log).read().split() if os.path.exists(ids_log) else []
        wait(lambda: len(lines()) >= 50, 120, "the first messages")
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", CLUSTER, "main", "stop", "-m", "fast"], check=True)
        stopped_at = time.time()
        time.sleep(OUTAGE)
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", CLUSTER, "main", "start"], check=True)
        restarted_at = time.time()
        wait(lambda: len(set(lines())) >= N, 600, "every message at the sink")
        # Anything sent twice arrives within a retry or two; give it the time.
        time.sleep(15)
        got = lines()
        dups = len(got) - len(set(got))
        print(json.dumps({"n": N, "outage_s": OUTAGE, "received": len(got), "distinct": len(set(got)),
                          "duplicates": dups,
                          "all_in_s_after_restart": round(time.time() - restarted_at - 15, 1),
                          "stopped_after_s": round(stopped_at - accepted_at, 1)}))
    finally:
        for p in procs:
            p.kill()
        sink.kill()
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", CLUSTER, "main", "start"],
                       stderr=subprocess.DEVNULL)
        wait(lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0, 60, "PostgreSQL")
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
