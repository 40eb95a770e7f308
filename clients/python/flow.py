"""The README's first steps with a client generated from mailroom's OpenAPI document.

    pip install openapi-python-client==0.29.1
    openapi-python-client generate --path openapi/openapi.json \
        --output-path clients/python/mailroom_client --meta none
    MAILROOM_URL=http://127.0.0.1:8080 MAILROOM_TOKEN=... SMTP_PORT=2525 python3 clients/python/flow.py

Every answer is parsed into the generated models, so a response that does not match its schema
fails here. CI runs this against the real binary and a local SMTP server.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mailroom_client import AuthenticatedClient  # noqa: E402
from mailroom_client.api.notifications import get_notification, post_notification, stats  # noqa: E402
from mailroom_client.api.settings import (  # noqa: E402
    get_smtp,
    list_audit,
    patch_subjects,
    put_admin_email,
    put_smtp,
    test_smtp,
)
from mailroom_client.models import (  # noqa: E402
    Accepted,
    AdminEmailInput,
    AuditPage,
    NotificationRequest,
    NotificationView,
    Problem,
    Security,
    SmtpSettingsInput,
    SmtpSettingsView,
    Stats,
    Status,
    SubjectsInput,
    SubjectsInputSubjects,
    SubjectsView,
    TemplateData,
    TestReport,
)


def expect(what, response, model):
    """The parsed body if it is a `model`, else fail with the status and problem document."""
    if not isinstance(response.parsed, model):
        detail = response.parsed.to_dict() if isinstance(response.parsed, Problem) else response.content
        raise SystemExit(f"{what}: HTTP {response.status_code} {detail}")
    return response.parsed


def main():
    base_url = os.environ.get("MAILROOM_URL", "http://127.0.0.1:8080")
    token = os.environ["MAILROOM_TOKEN"]
    smtp_port = int(os.environ.get("SMTP_PORT", "2525"))
    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)

    # 1. The SMTP server, written with the ETag of what we read.
    current = get_smtp.sync_detailed(client=client)
    expect("GET /settings/smtp", current, SmtpSettingsView)
    saved = expect(
        "PUT /settings/smtp",
        put_smtp.sync_detailed(
            client=client,
            body=SmtpSettingsInput(
                host="127.0.0.1",
                port=smtp_port,
                security=Security.NONE,
                from_address="portal@example.com",
                from_name="Developer Portal",
            ),
            if_match=current.headers["ETag"],
        ),
        SmtpSettingsView,
    )
    print(f"smtp: {saved.host}:{saved.port} ({saved.security}), password set: {saved.password_set}")

    # 2. Where admin notifications go, and one custom subject.
    expect(
        "PUT /settings/admin-email",
        put_admin_email.sync_detailed(client=client, body=AdminEmailInput(email="admins@example.com")),
        object,
    )
    subjects = SubjectsInputSubjects.from_dict(
        {"access_request_approved": "Access to {{ product_name }} granted"}
    )
    patched = expect(
        "PATCH /settings/subjects",
        patch_subjects.sync_detailed(client=client, body=SubjectsInput(subjects=subjects)),
        SubjectsView,
    )
    print(f"subjects: {len(patched.subjects)} events")

    # 3. Test the saved settings: no body at all.
    report = expect("POST /settings/smtp/test", test_smtp.sync_detailed(client=client), TestReport)
    steps = " ".join(f"{s.step}:{'ok' if s.ok else 'failed'}" for s in report.steps)
    if not report.ok:
        raise SystemExit(f"SMTP test failed: {report.error.to_dict()}")
    print(f"smtp test: {steps}")

    # 4. A notification; the answer is immediate (202).
    data = TemplateData.from_dict({"product_name": "Payments API", "user_name": "Ada"})
    accepted = expect(
        "POST /notifications",
        post_notification.sync_detailed(
            client=client,
            body=NotificationRequest(
                event="access_request_approved", to="ada@example.com", to_name="Ada Lovelace", data=data
            ),
            idempotency_key=f"python-{time.time_ns()}",
        ),
        Accepted,
    )
    print(f"accepted: {accepted.id} ({accepted.status})")

    # 5. Wait until it is no longer queued.
    settled = {Status.SENT, Status.FAILED, Status.EXPIRED, Status.SUPPRESSED}
    deadline = time.monotonic() + 30
    while True:
        notification = expect(
            "GET /notifications/{id}",
            get_notification.sync_detailed(client=client, id=accepted.id),
            NotificationView,
        )
        if notification.status in settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    outcomes = ", ".join(a.outcome for a in notification.attempts)
    print(f"status: {notification.status} after {outcomes}; subject: {notification.subject}")
    if notification.status != Status.SENT:
        raise SystemExit(f"the notification ended {notification.status}: {notification.status_reason}")

    # 6. Statistics and audit details, parsed.
    counts = expect("GET /notifications/stats", stats.sync_detailed(client=client), Stats).counts
    audit = expect("GET /settings/audit", list_audit.sync_detailed(client=client, limit=5), AuditPage)
    changed = [c.field for e in audit.entries for c in (e.details.changes or [])]
    print(f"sent so far: {counts.sent}; recently changed: {', '.join(changed)}")
    print("sent")


if __name__ == "__main__":
    main()
