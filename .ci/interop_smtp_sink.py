"""Interoperability check: mailroom against Postfix's smtp-sink, which offers PIPELINING.

    python3 .ci/interop_smtp_sink.py target/debug/mailroom

Three sinks on 127.0.0.1: one that takes everything (20 notifications must arrive, each as its own
file), one that refuses every RCPT with a 5xx (`-f rcpt`: the notification fails at RCPT and the
address is suppressed) and one that refuses RCPT with a 4xx (`-r rcpt`: deferred, retried). With
PIPELINING, MAIL, RCPT and DATA go out in one write, so a refused RCPT is followed by a refused
DATA in the same batch: the recorded reply must still be RCPT's.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"interop: {what} does not listen on {port}")


def call(base, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def sink(work, name, *flags):
    port = free_port()
    dump = os.path.join(work, name)
    os.makedirs(dump)
    proc = subprocess.Popen(["smtp-sink", "-u", "root", *flags, "-d", dump + "/%H%M%S.",
                             f"127.0.0.1:{port}", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, f"smtp-sink {name}")
    return proc, port, dump


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="interop-sink-")
    procs = []
    try:
        ok_sink, ok_port, ok_dump = sink(work, "accept")
        hard_sink, hard_port, _ = sink(work, "hard", "-f", "rcpt")
        soft_sink, soft_port, _ = sink(work, "soft", "-r", "rcpt")
        procs += [ok_sink, hard_sink, soft_sink]
        http_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
        env.update({
            "MAILROOM_BIND": f"127.0.0.1:{http_port}",
            "MAILROOM_DATABASE_URL": f"sqlite://{work}/mailroom.db",
            "MAILROOM_DATA_DIR": work,
            "MAILROOM_DELIVERY_RETRY_BASE_SECONDS": "1",
            "MAILROOM_DELIVERY_RETRY_MAX_SECONDS": "2",
            "MAILROOM_DELIVERY_POLL_MILLISECONDS": "100",
        })
        server = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(work, "serve.log"), "w"))
        procs.append(server)
        wait_port(http_port, "mailroom")
        base = f"http://127.0.0.1:{http_port}"
        token = subprocess.run([binary, "token", "--sub", "interop", "--scope",
                                "settings:read settings:write notifications:send notifications:read"],
                               env=env, check=True, capture_output=True, text=True).stdout.strip()

        def use(port):
            status, body = call(base, "PUT", "/settings/smtp", token, {
                "host": "127.0.0.1", "port": port, "security": "none",
                "from_address": "portal@example.com", "from_name": "Interop"})
            assert status == 200, body

        def post(to):
            status, body = call(base, "POST", "/notifications", token,
                                {"event": "user_deactivated", "to": to})
            assert status == 202, body
            return body["id"]

        def until(id, predicate, what, timeout=30):
            deadline = time.time() + timeout
            while time.time() < deadline:
                _, n = call(base, "GET", f"/notifications/{id}", token)
                if predicate(n):
                    return n
                time.sleep(0.1)
            raise SystemExit(f"interop: {id} never became {what}: {n}")

        # 1. Everything is taken: 20 notifications, 20 files.
        use(ok_port)
        ids = [post(f"user{i}@example.com") for i in range(20)]
        for id in ids:
            until(id, lambda n: n["status"] == "sent", "sent")
        files = [f for _, _, fs in os.walk(ok_dump) for f in fs]
        assert len(files) == 20, f"smtp-sink stored {len(files)} of 20 messages"
        print("interop: smtp-sink (PIPELINING) received 20 of 20")

        # 2. RCPT refused with a 5xx: failed, the RCPT reply recorded, the address suppressed.
        use(hard_port)
        id = post("gone@example.com")
        n = until(id, lambda n: n["status"] == "failed", "failed")
        attempt = n["attempts"][0]
        assert attempt["smtp_code"] // 100 == 5, attempt
        _, listed = call(base, "GET", "/suppressions", token)
        assert [s["address"] for s in listed["suppressions"]] == ["gone@example.com"], listed
        print(f"interop: a 5xx to a pipelined RCPT failed it: {attempt['smtp_code']} {attempt['reply']}")

        # 3. RCPT refused with a 4xx: deferred and retried, then sent once a sink takes it.
        use(soft_port)
        id = post("busy@example.com")
        n = until(id, lambda n: any(a["outcome"] == "deferred" for a in n["attempts"]), "deferred")
        attempt = n["attempts"][0]
        assert attempt["smtp_code"] // 100 == 4, attempt
        assert n["status"] in ("queued", "sending"), n
        use(ok_port)
        until(id, lambda n: n["status"] == "sent", "sent")
        print(f"interop: a 4xx to a pipelined RCPT deferred it ({attempt['smtp_code']}), the retry was sent")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
