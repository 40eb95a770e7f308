#!/usr/bin/env python3
"""mailroom benchmarks, with their baselines measured in the same run.

    bash bench/run.sh            # N=100000, scale 1M (about 10 minutes on 2 cores)
    bash bench/run.sh --quick    # N=20000, scale 100k
    bash bench/run.sh --postgres # also run accept and end-to-end on PostgreSQL

Everything binds to 127.0.0.1. Prints one table and writes it to BENCHMARKS.md.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/mailroom")
LOADGEN = os.path.join(ROOT, "target/release/examples/loadgen")
SINK_PORT, POSTFIX_PORT = 2526, 25
HTTP_PORT = 18080


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, text=True, capture_output=True, **kw).stdout


class Sink:
    """Postfix's smtp-sink, counting messages (-c prints 'mesg=N')."""

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="sink-", suffix=".log", delete=False).name
        self.proc = subprocess.Popen(["smtp-sink", "-u", "root", "-c", f"127.0.0.1:{SINK_PORT}", "1024"],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise SystemExit(f"smtp-sink did not start (is port {SINK_PORT} taken?): " + open(self.log).read())

    def count(self):
        text = open(self.log, errors="replace").read()
        found = re.findall(r"mesg=(\d+)", text)
        return int(found[-1]) if found else 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


class Mailroom:
    def __init__(self, db_url, delivery, extra=None):
        self.dir = tempfile.mkdtemp(prefix="mailroom-bench-")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
        self.env.update({
            "MAILROOM_BIND": f"127.0.0.1:{HTTP_PORT}",
            "MAILROOM_DATABASE_URL": db_url or f"sqlite://{self.dir}/mailroom.db",
            "MAILROOM_DATA_DIR": self.dir,
            "MAILROOM_DELIVERY_ENABLED": "true" if delivery else "false",
            "MAILROOM_DELIVERY_CONCURRENCY": "16",
            "MAILROOM_DELIVERY_BATCH_SIZE": "500",
            "MAILROOM_DELIVERY_POLL_MILLISECONDS": "200",
            "RUST_LOG": "warn",
        })
        self.env.update(extra or {})
        self.proc = subprocess.Popen([BIN, "serve"], env=self.env, cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "serve.log"), "w"))
        self.base = f"http://127.0.0.1:{HTTP_PORT}"
        for _ in range(200):
            try:
                urllib.request.urlopen(self.base + "/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("mailroom did not start: " + open(os.path.join(self.dir, "serve.log")).read())
        self.token = sh([BIN, "token", "--sub", "bench", "--ttl", "2h", "--scope",
                         "settings:write notifications:send notifications:read"], env=self.env, cwd=self.dir).strip()

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", "Bearer " + self.token)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as res:
            return json.loads(res.read())

    def use_sink(self):
        self.call("PUT", "/settings/smtp", {"host": "127.0.0.1", "port": SINK_PORT, "security": "none",
                                            "from_address": "bench@example.com", "from_name": "Bench"})

    def sent(self):
        return self.call("GET", "/notifications/stats")["counts"]["sent"]

    def rss_kb(self):
        status = open(f"/proc/{self.proc.pid}/status").read()
        return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}

    def load(self, *args):
        out = sh([LOADGEN, "--url", self.base, "--token", self.token, *map(str, args)])
        return json.loads(out.strip().splitlines()[-1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def accept_phase(n, db_url):
    """Closed loop at 64 connections, then open loop at a fixed 5,000/s and at a quarter of the
    capacity just measured (the same load whatever the machine's speed)."""
    m = Mailroom(db_url, delivery=False)
    try:
        closed = m.load("-n", n, "-c", 64)
        fixed = m.load("-n", 50_000, "--rate", 5000)
        quarter_rate = max(100, int(closed["notifications_per_second"] / 4))
        quarter = m.load("-n", quarter_rate * 10, "--rate", quarter_rate)
        quarter["rate"] = quarter_rate
    finally:
        m.stop()
    return closed, fixed, quarter


def mixed_phase(seconds, db_url, accept_alone):
    """Accept and deliver at once: the closed-loop accept rate while the dispatcher delivers the
    same stream to the sink, against the accept rate measured alone."""
    sink = Sink()
    m = Mailroom(db_url, delivery=True)
    try:
        m.use_sink()
        n = int(accept_alone * seconds)
        result = m.load("-n", n, "-c", 64)
        result["sent_during"] = m.sent()
    finally:
        m.stop()
        sink.stop()
    return result


def e2e_phase(n, db_url):
    sink = Sink()
    m = Mailroom(db_url, delivery=True)
    try:
        m.use_sink()
        start = time.time()
        m.load("-n", n, "-c", 64)
        wait(lambda: m.sent() >= n, 600, "every notification to be sent")
        seconds = time.time() - start
        time.sleep(0.5)
        delivered = sink.count()
    finally:
        m.stop()
        sink.stop()
    return {"seconds": seconds, "per_second": n / seconds, "sink_counted": delivered}


def loopback_limit(n):
    sink = Sink()
    try:
        start = time.time()
        sh(["smtp-source", "-s", "16", "-l", "2048", "-m", str(n), "-d", "-f", "bench@example.com",
            "-t", "user@example.com", f"127.0.0.1:{SINK_PORT}"])
        seconds = time.time() - start
    finally:
        sink.stop()
    return {"seconds": seconds, "per_second": n / seconds}


def postfix_relay(n):
    """Postfix as the alternative: accept into its queue (smtp-source, 16 sessions), relay to the sink."""
    sh(["postconf", "-e", "inet_interfaces = loopback-only", "inet_protocols = ipv4", "mydestination =",
        f"relayhost = [127.0.0.1]:{SINK_PORT}", "mynetworks = 127.0.0.0/8", "myhostname = bench.local",
        "smtpd_relay_restrictions = permit_mynetworks, reject", "smtp_tls_security_level = none",
        "smtpd_tls_security_level = none", "maillog_file = /var/log/postfix-bench.log",
        "default_transport = smtp", "relay_transport = smtp"])
    subprocess.run(["postfix", "stop"], capture_output=True)
    sh(["postfix", "start"])
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True)
    time.sleep(1)
    sink = Sink()
    try:
        start = time.time()
        sh(["smtp-source", "-s", "16", "-l", "2048", "-m", str(n), "-d", "-f", "bench@example.com",
            "-t", "user@example.com", f"127.0.0.1:{POSTFIX_PORT}"])
        accepted = time.time() - start
        wait(lambda: sink.count() >= n, 1200, "Postfix to deliver everything")
        delivered = time.time() - start
    finally:
        sink.stop()
        subprocess.run(["postfix", "stop"], capture_output=True)
    return {"accept_per_second": n / accepted, "delivered_per_second": n / delivered}


def scale_phase(n):
    claims = [json.loads(line) for line in sh(["cargo", "bench", "-q", "--bench", "claim"], cwd=ROOT).splitlines()
              if line.startswith("{")]
    m = Mailroom(None, delivery=False)
    try:
        batch = m.load("-n", n, "-c", 8, "--batch", 1000)
        rss = m.rss_kb()
    finally:
        m.stop()
    return claims, batch, rss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    scale_n = 100_000 if args.quick else 1_000_000
    mixed_seconds = 20 if args.quick else 60
    command = "bash bench/run.sh" + (" --quick" if args.quick else "") + (" --postgres" if args.postgres else "")

    results = {}
    results["limit"] = loopback_limit(n)
    results["postfix"] = postfix_relay(n)
    results["accept"], results["fixed"], results["quarter"] = accept_phase(n, None)
    results["e2e"] = e2e_phase(n, None)
    results["mixed"] = mixed_phase(mixed_seconds, None, results["accept"]["notifications_per_second"])
    if args.postgres:
        pg = os.environ.get("MAILROOM_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/mailroom_bench")
        subprocess.run(["psql", "postgres://postgres@127.0.0.1:5432/postgres", "-c", "DROP DATABASE IF EXISTS mailroom_bench WITH (FORCE)"], capture_output=True)
        sh(["psql", "postgres://postgres@127.0.0.1:5432/postgres", "-c", "CREATE DATABASE mailroom_bench"])
        results["pg_accept"], results["pg_fixed"], results["pg_quarter"] = accept_phase(n, pg)
        sh(["psql", pg, "-c", "TRUNCATE notifications CASCADE"])
        results["pg_e2e"] = e2e_phase(n, pg)
    results["claims"], results["scale_fill"], results["rss"] = scale_phase(scale_n)

    limit, postfix = results["limit"]["per_second"], results["postfix"]
    rows = [
        ("Loopback SMTP limit: smtp-source -> smtp-sink (16 sessions, 2 KB, reused connections)",
         f"{limit:,.0f} msg/s", "1.00", f"{limit / postfix['delivered_per_second']:.1f}x"),
        ("Postfix relay: accepted into its queue (smtp-source, 16 sessions)",
         f"{postfix['accept_per_second']:,.0f} msg/s", f"{postfix['accept_per_second'] / limit:.2f}", "1.0x"),
        ("Postfix relay: delivered to smtp-sink, end to end",
         f"{postfix['delivered_per_second']:,.0f} msg/s", f"{postfix['delivered_per_second'] / limit:.2f}", "1.0x"),
    ]

    def add(prefix, accept, fixed, e2e, quarter):
        rows.extend([
            (f"{prefix}accept: POST /notifications, 64 connections, N={n} (fsync'd before 202)",
             f"{accept['notifications_per_second']:,.0f} /s (p50 {accept['p50_ms']:.1f} ms, p99 {accept['p99_ms']:.1f} ms, p99.9 {accept['p999_ms']:.1f} ms)",
             f"{accept['notifications_per_second'] / limit:.2f}", f"{accept['notifications_per_second'] / postfix['accept_per_second']:.1f}x"),
            (f"{prefix}latency at a fixed 5,000/s (open loop, 50k requests)",
             f"p50 {fixed['p50_ms']:.2f} ms, p99 {fixed['p99_ms']:.2f} ms, p99.9 {fixed['p999_ms']:.2f} ms, errors {fixed['errors']}",
             "", ""),
            (f"{prefix}latency at a quarter of the accept capacity ({quarter['rate']:,}/s, open loop, 10 s)",
             f"p50 {quarter['p50_ms']:.2f} ms, p99 {quarter['p99_ms']:.2f} ms, p99.9 {quarter['p999_ms']:.2f} ms, errors {quarter['errors']}",
             "", ""),
            (f"{prefix}end to end: first POST until all {n} read `sent`",
             f"{e2e['per_second']:,.0f} msg/s ({e2e['seconds']:.1f} s; sink counted {e2e['sink_counted']})",
             f"{e2e['per_second'] / limit:.2f}", f"{e2e['per_second'] / postfix['delivered_per_second']:.1f}x"),
        ])

    add("SQLite ", results["accept"], results["fixed"], results["e2e"], results["quarter"])
    mixed = results["mixed"]
    rows.append((f"SQLite accept while delivering: 64 connections, {mixed['notifications']:,} notifications, delivery on",
                 f"{mixed['notifications_per_second']:,.0f} /s (p99 {mixed['p99_ms']:.1f} ms; {mixed['sent_during']:,} sent meanwhile)",
                 f"{mixed['notifications_per_second'] / limit:.2f}", ""))
    if args.postgres:
        add("PostgreSQL ", results["pg_accept"], results["pg_fixed"], results["pg_e2e"], results["pg_quarter"])
    for c in results["claims"]:
        rows.append((f"claim 100 with {c['queued']:,} queued ({c['backend']})",
                     f"median {c['claim_ms_median']:.2f} ms, p90 {c['claim_ms_p90']:.2f} ms", "", ""))
    rows.append((f"server RSS after accepting {scale_n:,} (delivery paused, batch API)",
                 f"{results['rss']['VmRSS'] / 1024:.0f} MB now, {results['rss']['VmHWM'] / 1024:.0f} MB peak "
                 f"({results['scale_fill']['notifications_per_second']:,.0f} /s via batches of 1000)", "", ""))

    def target(name, value, ok, shown):
        targets.append(f"| {name} | {shown} | {'met' if ok else 'missed'} |")

    targets = ["| target | measured | met? |", "|---|---|---|"]
    acc, e2e = results["accept"]["notifications_per_second"], results["e2e"]["per_second"]
    pf = postfix["delivered_per_second"]
    target("SQLite end to end >= 0.45 of the loopback limit", e2e / limit, e2e / limit >= 0.45, f"{e2e / limit:.2f}")
    target("SQLite end to end >= 10x Postfix", e2e / pf, e2e / pf >= 10, f"{e2e / pf:.1f}x")
    target("SQLite accept >= 0.90 of the loopback limit (fsync'd)", acc / limit, acc / limit >= 0.90, f"{acc / limit:.2f}")
    q = results["quarter"]
    target(f"SQLite p99 of POST at 0.25 of capacity ({q['rate']:,}/s) < 5 ms", q["p99_ms"], q["p99_ms"] < 5,
           f"{q['p99_ms']:.2f} ms (at a fixed 5,000/s: {results['fixed']['p99_ms']:.2f} ms)")
    ratio = mixed["notifications_per_second"] / acc
    target("SQLite accept while delivering >= 0.8 of accept alone", ratio, ratio >= 0.8, f"{ratio:.2f}")
    if args.postgres:
        pe, pa = results["pg_e2e"]["per_second"], results["pg_accept"]["notifications_per_second"]
        target("PostgreSQL end to end >= 0.30 of the limit", pe / limit, pe / limit >= 0.30, f"{pe / limit:.2f}")
        target("PostgreSQL end to end >= 6x Postfix", pe / pf, pe / pf >= 6, f"{pe / pf:.1f}x")
        target("PostgreSQL accept >= 0.65 of the limit", pa / limit, pa / limit >= 0.65, f"{pa / limit:.2f}")
        pq = results["pg_quarter"]
        target(f"PostgreSQL p99 of POST at 0.25 of capacity ({pq['rate']:,}/s) < 5 ms", pq["p99_ms"], pq["p99_ms"] < 5,
               f"{pq['p99_ms']:.2f} ms")
    rss = results["rss"]
    target(f"RSS < 100 MB at rest and at peak with {scale_n:,} queued", rss["VmHWM"], rss["VmHWM"] < 100 * 1024,
           f"{rss['VmRSS'] / 1024:.0f} MB at rest, {rss['VmHWM'] / 1024:.0f} MB peak")

    cpu = sh("nproc").strip()
    mem = sh("free -g | awk '/Mem:/ {print $2}'").strip()
    table = ["| measurement | result | ratio to loopback limit | ratio to Postfix |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()}: "
              f"{cpu} cores, {mem} GiB, {platform.platform()}.\n\nCommand: `{command}`\n")
    report = header + "\n" + "\n".join(table) + "\n\nTargets (ratios from this run):\n\n" + "\n".join(targets) + "\n"
    print(report)
    with open(os.path.join(ROOT, "bench", "latest.json"), "w") as f:
        json.dump(results, f, indent=2)
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n<!-- latest -->\n<!-- /latest -->\n"
    start, end = text.index("<!-- latest -->") + len("<!-- latest -->"), text.index("<!-- /latest -->")
    with open(path, "w") as f:
        f.write(text[:start] + "\n" + report + text[end:])


if __name__ == "__main__":
    main()
