"""Telling someone a run ended: a signed webhook and an e-mail, on success and on failure.

- Webhook: connection ``video_webhook`` (host = the URL to POST to, password = the shared
  secret). The JSON body is signed with HMAC-SHA256 of ``"<timestamp>.<body>"``, sent as
  ``X-Signature: t=<timestamp>,sha256=<hex>``; receivers check it with ``verify_signature``.
- E-mail: the run's ``notify_email`` param, through Airflow's ``SmtpNotifier`` and the
  ``smtp_default`` connection, with the run's preview and contact strip attached. The sender
  is the connection's ``from_email`` extra, else ``[smtp] smtp_mail_from``.
- A finished run's notifications carry ``result_url``: a read-only SAS link to the one result
  blob, valid for ``[video_style_transfer] result_link_hours`` (default 24; 0 turns it off),
  left out when the data connection cannot sign (no account key, no Entra ID). It is never
  logged.

An upload the watcher refuses before any run exists (``notify_quarantined``) gets the same
two: the webhook with status ``quarantined``, and an e-mail with the reason to the address in
the upload's ``notify_email`` metadata, through ``smtp_default``.

Either is skipped, with a log line, when it is not configured. Secrets never enter the body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import tempfile
import time
import urllib.request
from pathlib import Path, PurePosixPath

from airflow.sdk import BaseNotifier

WEBHOOK_CONN = "video_webhook"
SMTP_CONN = "smtp_default"
CONFIG_SECTION, DEFAULT_LINK_HOURS = "video_style_transfer", 24.0
PICTURES = ("preview_blob", "strip_blob")  # blob names in videos-out that a summary may carry
SIGNATURE_HEADER = "X-Signature"
log = logging.getLogger(__name__)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},sha256={digest}"


def verify_signature(secret: str, body: bytes, header: str, max_age: float = 300) -> bool:
    """For receivers: the signature matches and is recent (a replayed old message fails).
    Any header that is not one we could have sent (e.g. non-ASCII) is simply False."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    fresh = abs(time.time() - timestamp) <= max_age
    return fresh and hmac.compare_digest(sign(secret, body, timestamp).encode(), header.encode(errors="replace"))


def send_webhook(payload: dict, conn_id: str = WEBHOOK_CONN, timeout: float = 10) -> bool:
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - "not configured" comes in several exception types
        log.info("no %s connection: webhook skipped", conn_id)
        return False
    if not conn.password:
        log.warning("connection %s has no password (the signing key): webhook not sent", conn_id)
        return False
    url = conn.host if "://" in (conn.host or "") else f"{conn.schema or 'http'}://{conn.host}:{conn.port or 80}"
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(conn.password, body, int(time.time()))}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL is operator-configured
        log.info("webhook answered %s", response.status)
    return True


def run_summary(context, status: str, details: dict | None = None) -> dict:
    """What a notification says: no secrets, only the run's facts."""
    ti = context.get("ti") or context.get("task_instance")
    params = context.get("params") or {}
    summary = {
        "status": status,
        "dag_id": ti.dag_id if ti else None,
        "run_id": context.get("run_id") or (ti.run_id if ti else None),
        "input_blob": params.get("input_blob"),
        "style": params.get("style"),
    }
    if status == "failed":
        summary["task_id"] = ti.task_id if ti else None
        summary["error"] = str(context.get("exception") or "")[:500]
    return summary | (details or {})


class RunNotifier(BaseNotifier):
    """Sends the webhook and the e-mail for a run; usable as ``on_failure_callback``."""

    template_fields = ()

    def __init__(self, status: str = "failed", details: dict | None = None):
        super().__init__()
        self.status = status
        self.details = details

    def notify(self, context) -> None:
        summary = run_summary(context, self.status, self.details)
        if summary.get("published") and summary.get("output_blob"):
            link = result_link(summary["output_blob"])
            if link:
                summary["result_url"] = link
        try:
            send_webhook(summary)
        except OSError as exc:  # a notification must not turn a finished run into a failed one
            log.warning("webhook failed: %s", exc)
        to = (context.get("params") or {}).get("notify_email")
        if to:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            subject = f"Video style transfer {summary['status']}: {summary.get('input_blob')}"
            html = "<pre>" + json.dumps(summary, indent=2).replace("<", "&lt;") + "</pre>"
            sender = mail_sender()
            if not sender:
                log.warning("no e-mail sender: set from_email in the %s connection's extra or [smtp] smtp_mail_from; "
                            "e-mail not sent", SMTP_CONN)
                return
            with tempfile.TemporaryDirectory() as folder:
                try:
                    files = fetch_pictures(summary, Path(folder))
                    SmtpNotifier(to=to, from_email=sender, subject=subject, smtp_conn_id=SMTP_CONN,
                                 html_content=html, files=files).notify(context)
                except OSError as exc:
                    log.warning("e-mail failed: %s", exc)


def notify_quarantined(input_blob: str, reason: str, quarantined_as: str, notify_email: str | None) -> None:
    """Tell the uploader an upload was refused with no run (the watcher quarantined it): a reason
    file alone reaches nobody. Never raises: the upload is quarantined either way."""
    summary = {"status": "quarantined", "input_blob": input_blob, "error": reason[:500],
               "quarantine_blob": quarantined_as}
    try:
        send_webhook(summary)
    except OSError as exc:
        log.warning("webhook failed: %s", exc)
    if not notify_email:
        return
    sender = mail_sender()
    if not sender:
        log.warning("no e-mail sender: set from_email in the %s connection's extra or [smtp] smtp_mail_from; "
                    "e-mail not sent", SMTP_CONN)
        return
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    html = "<pre>" + json.dumps(summary, indent=2).replace("<", "&lt;") + "</pre>"
    try:
        with SmtpHook(smtp_conn_id=SMTP_CONN) as hook:
            hook.send_email_smtp(to=notify_email, from_email=sender, subject=f"Video refused: {input_blob}",
                                 html_content=html)
    except Exception as exc:  # noqa: BLE001 -- not configured, refused, unreachable: the log says which
        log.warning("e-mail failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def mail_sender(conn_id: str = SMTP_CONN) -> str | None:
    """The address e-mail is sent from: the connection's ``from_email``, else ``[smtp] smtp_mail_from``."""
    from airflow.configuration import conf
    from airflow.sdk import BaseHook

    try:
        sender = BaseHook.get_connection(conn_id).extra_dejson.get("from_email")
    except Exception:  # noqa: BLE001 - "not configured" comes in several exception types
        sender = None
    return sender or conf.get("smtp", "smtp_mail_from", fallback=None) or None


def result_link(output_blob: str) -> str | None:
    """A read-only link to the result for ``result_link_hours`` (None when off or when the data
    connection cannot sign). Only the notification carries it: it is a key to that blob."""
    from airflow.configuration import conf

    hours = conf.getfloat(CONFIG_SECTION, "result_link_hours", fallback=DEFAULT_LINK_HOURS)
    if hours <= 0:
        return None
    from storage.blobs import DATA_CONN, OUTPUTS, BlobStore

    try:
        return BlobStore(DATA_CONN).read_link(OUTPUTS, output_blob, hours)
    except Exception as exc:  # noqa: BLE001 - a link is a convenience: the notification goes without it
        log.warning("no result link: %s", type(exc).__name__)
        return None


def fetch_pictures(summary: dict, folder: Path) -> list[str]:
    """The run's preview and contact strip from videos-out, as files to attach."""
    names = [summary.get(key) for key in PICTURES if summary.get(key)]
    if not names:
        return []
    from storage.blobs import DATA_CONN, OUTPUTS, BlobStore

    data, files = BlobStore(DATA_CONN), []
    for name in names:
        path = folder / PurePosixPath(name).name
        data.download(OUTPUTS, name, path)
        files.append(str(path))
    return files
