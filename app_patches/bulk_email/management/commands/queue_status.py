"""``manage.py queue_status [--json] [--timeout SECONDS]``: the whole queue at a glance, read-only.

What an operator (and ``playbooks/status.yml``) asks on day 2: is anything
waiting or stuck, are the workers alive, when did a message last go out?

Output, one line per part::

    mode=<mode>
    ledger campaigns=<n> sent=<n> failed=<n> pending=<n> sending=<n> held=<n> sent_last_24h=<n> daily_quota=<n> last_sent_at=<iso|never> oldest_pending_at=<iso|none>
    rq queue=<name> queued=<n> scheduled=<n> started=<n> failed=<n> deferred=<n> finished=<n>   (rq, per queue)
    rq workers=<n> busy=<n> idle=<n>                                                         (rq)
    celery queue=<name> messages=<n>                                                         (celery, per queue)
    celery workers=<n> active=<n> reserved=<n> scheduled=<n>                                 (celery)
    celery results started=<n> retrying=<n> failed=<n>                                       (celery)
    error <part>: <message>                                                                  (a broker that did not answer)

--json prints one JSON object instead, with the same parts as keys ("mode",
"ledger", "rq" or "celery", "errors"). The ledger is the database, so it
answers even when the broker is down; a broker error becomes an "errors"
entry instead of a traceback, because a status command is what one runs when
something is broken. Exit status 0 whenever the report could be printed.

Nothing here writes: no registry cleanup, no worker-key pruning (see
rq_jobs.queue_overview), no result deleted, so it is safe from Ansible's
check mode and from monitoring that runs it every minute.
"""
import json
from argparse import ArgumentParser
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db.models import Count, Max, Min

from bulk_email import modes
from bulk_email.models import Campaign, Delivery
from bulk_email.quota import sent_in_last_day
from bulk_email.switch import held_campaigns


def iso(value: datetime | None) -> str | None:
    """A timestamp for the report (ISO 8601, with its time zone), None stays None."""
    return value.isoformat() if value else None


def ledger_overview() -> dict[str, Any]:
    """Totals of the ledger over all campaigns, and when the last message was accepted."""
    # Sent, failed, pending: the order campaign_status and send_campaign print them in.
    counts = dict.fromkeys((Delivery.Status.SENT, Delivery.Status.FAILED, Delivery.Status.PENDING), 0)
    for status, total in Delivery.objects.order_by().values_list("status").annotate(n=Count("id")):
        counts[status] = total
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING)
    return {
        "campaigns": Campaign.objects.count(),
        **{str(status): total for status, total in counts.items()},
        "sending": pending.filter(claimed_at__isnull=False).count(),
        "held": held_campaigns().count(),
        "sent_last_24h": sent_in_last_day(),
        "daily_quota": settings.BULK_EMAIL_DAILY_QUOTA,
        "last_sent_at": iso(
            Delivery.objects.filter(status=Delivery.Status.SENT).aggregate(last=Max("sent_at"))["last"]
        ),
        "oldest_pending_at": iso(pending.aggregate(oldest=Min("campaign__created_at"))["oldest"]),
    }


def queue_status(timeout: float = 1.0) -> dict[str, Any]:
    """The report of the module docstring, as a dict."""
    mode = settings.BULK_EMAIL_QUEUE_MODE
    report: dict[str, Any] = {"mode": mode, "ledger": ledger_overview(), "errors": []}
    try:
        part = modes.get(mode).queue_report(timeout)
        if part is not None:
            report[mode] = part
    except Exception as exc:  # noqa: BLE001 - any broker failure is part of the answer
        # redis-py, kombu and py-amqp each raise their own error types; the report names it.
        report["errors"].append({"part": mode, "error": f"{type(exc).__name__}: {exc}"})
    return report


def text_lines(report: dict[str, Any]) -> list[str]:
    """The human form of a report (stable: the tests and the status playbook read it)."""
    ledger = report["ledger"]
    lines = [
        f"mode={report['mode']}",
        "ledger " + " ".join(
            f"{key}={value if value is not None else ('never' if key == 'last_sent_at' else 'none')}"
            for key, value in ledger.items()
        ),
    ]
    for name in modes.NAMES:
        if name in report:
            lines.extend(modes.get(name).report_lines(report[name]))
    for error in report["errors"]:
        lines.append(f"error {error['part']}: {error['error']}")
    return lines


class Command(BaseCommand):
    help = "Show queue depths, workers, failures and the last send, without changing anything."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")
        parser.add_argument(
            "--timeout", type=float, default=1.0,
            help="Seconds to wait for celery workers to answer (celery mode).",
        )

    def handle(self, *args: object, **options: Any) -> None:
        report = queue_status(options["timeout"])
        if options["json"]:
            self.stdout.write(json.dumps(report))
        else:
            self.stdout.write("\n".join(text_lines(report)))
