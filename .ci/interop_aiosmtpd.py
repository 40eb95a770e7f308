"""Interoperability check: mailroom against Debian's aiosmtpd with STARTTLS and AUTH.

Run with Debian's python (/usr/bin/python3, which sees python3-aiosmtpd):
    /usr/bin/python3 .ci/interop_aiosmtpd.py target/debug/mailroom

It starts aiosmtpd on 127.0.0.1 (STARTTLS required, AUTH PLAIN/LOGIN after TLS), starts
`mailroom serve` on a fresh SQLite database trusting the server's certificate, then checks through
the HTTP API that the SMTP test passes and sends a message, and that a notification is delivered.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER, PASSWORD = "mailer", "interop-secret-123"


class Collect:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode("utf8", "replace")))
        return "250 OK queued"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="mailroom-interop-")
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    handler = Collect()
    smtp_port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=smtp_port, tls_context=tls, require_starttls=True,
        authenticator=authenticator, auth_required=True, auth_require_tls=True,
    )
    controller.start()

    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    env.update({
        "MAILROOM_BIND": f"127.0.0.1:{http_port}",
        "MAILROOM_DATABASE_URL": f"sqlite://{work}/mailroom.db",
        "MAILROOM_SMTP_CA_FILE": cert,
        "MAILROOM_DELIVERY_POLL_MILLISECONDS": "100",
        "RUST_LOG": "warn",
    })
    server = subprocess.Popen([binary, "serve"], env=env, cwd=work)
    try:
        base = f"http://127.0.0.1:{http_port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        token = subprocess.run(
            [binary, "token", "--sub", "interop", "--scope", "settings:write smtp:test notifications:send notifications:read"],
            env=env, cwd=work, check=True, capture_output=True, text=True,
        ).stdout.strip()

        settings = {"host": "localhost", "port": smtp_port, "security": "starttls", "username": USER,
                    "password": PASSWORD, "from_address": "portal@example.com", "from_name": "Interop Portal"}
        status, report = call(base, "POST", "/settings/smtp/test", token, {"settings": settings, "to": "ops@example.com"})
        assert status == 200 and report["ok"], report
        steps = [s["step"] for s in report["steps"]]
        assert steps == ["resolve", "connect", "greeting", "ehlo", "starttls", "auth", "mail_from", "rcpt_to", "data"], steps
        assert PASSWORD not in json.dumps(report)

        wrong = dict(settings, password="not-the-password")
        status, report = call(base, "POST", "/settings/smtp/test", token, {"settings": wrong})
        assert status == 200 and report["error"]["code"] == "auth_failed", report

        status, saved = call(base, "PUT", "/settings/smtp", token, settings)
        assert status == 200 and saved["password_set"], saved
        status, accepted = call(base, "POST", "/notifications", token,
                                {"event": "access_request_approved", "to": "ada@example.com", "to_name": "Ada",
                                 "data": {"product_name": "Payments API"}})
        assert status == 202, accepted
        for _ in range(200):
            status, n = call(base, "GET", "/notifications/" + accepted["id"], token)
            if n["status"] in ("sent", "failed"):
                break
            time.sleep(0.1)
        assert n["status"] == "sent", n
        assert len(handler.messages) == 2, handler.messages
        mail_from, rcpts, content = handler.messages[1]
        assert mail_from == "portal@example.com" and rcpts == ["ada@example.com"], handler.messages[1]
        assert "Subject: Your access request for Payments API was approved" in content, content
        print("interop: aiosmtpd STARTTLS+AUTH test, test message and notification delivery: ok")
    finally:
        server.terminate()
        server.wait(timeout=30)
        controller.stop()


if __name__ == "__main__":
    main()
