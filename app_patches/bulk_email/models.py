"""The delivery ledger: one row per (campaign, recipient).

The ledger, not the SMTP session, is the source of truth about who got a
message. Each row is marked sent the moment the server accepts it, so a
crash, a retry or a second worker never mails the same person twice, and
the pending rows are exactly the work that remains.

A pending row can be *claimed* (claimed_by/claimed_at set) by the one
runner that is sending it right now; see bulk_email.claims for why and how a
claim left behind by a killed process is taken over.
"""
import uuid

from django.db import models
from django.utils import timezone
from django.db.models.functions import Lower


class Campaign(models.Model):
    """One message (subject and bodies) to be sent to many recipients."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subject = models.CharField(max_length=255)
    body = models.TextField()
    html_body = models.TextField(blank=True, default="")
    from_email = models.CharField(max_length=254)
    mode = models.CharField(max_length=16, help_text="Queue mode it was dispatched with.")
    created_at = models.DateTimeField(auto_now_add=True)
    # NULL while the campaign is held (created or resumed during a queue mode switch, see
    # switch.py): ``queue_switch dispatch-held`` hands exactly those to the new mode.
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was handed to its queue mode; empty while it is held."
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.subject} ({self.id})"

    def counts(self) -> dict[str, int]:
        """Return the number of deliveries per status (all statuses present, zero if none)."""
        counts = {status: 0 for status in Delivery.Status.values}
        rows = self.deliveries.values_list("status").annotate(n=models.Count("id"))
        for status, n in rows:
            counts[status] = n
        return counts

    def mark_dispatched(self) -> None:
        """Record that the campaign was (last) handed to its queue mode (see bulk_email.dispatch)."""
        self.dispatched_at = timezone.now()
        Campaign.objects.filter(pk=self.pk).update(dispatched_at=self.dispatched_at)

    def sending(self) -> int:
        """Pending deliveries some runner has claimed (being sent now, or left by a dead one)."""
        return self.deliveries.filter(
            status=Delivery.Status.PENDING, claimed_at__isnull=False
        ).count()


class Delivery(models.Model):
    """The state of one recipient of one campaign."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="deliveries")
    recipient = models.CharField(max_length=254)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    # Who is sending this pending delivery right now (a job id or host:pid) and since when;
    # claimed_at is NULL when nobody is. Kept as the last sender's name once sent, for audits.
    claimed_by = models.CharField(max_length=128, blank=True, default="")
    claimed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "deliveries"
        constraints = [
            # Case-insensitive, like the de-duplication in create_campaign:
            # Ann@x.org and ann@x.org are one person's mailbox in practice.
            models.UniqueConstraint(
                "campaign", Lower("recipient"), name="bulk_email_delivery_unique_recipient"
            ),
        ]
        indexes = [
            # The daily quota counts sent rows of the last 24 h before every message.
            models.Index(fields=["status", "sent_at"], name="bulk_email_status_sent_at"),
        ]

    def __str__(self) -> str:
        return f"{self.recipient} [{self.status}]"


class LoginRefusal(models.Model):
    """The SMTP server refused the login of one email configuration (its fingerprint).

    Shared by every process through the database, so that after one 535 the
    other batches and the queue's retries do not log in again with the same
    wrong password (providers lock an account after a few failed logins).
    A changed configuration has another fingerprint and is tried at once;
    the refusal also lapses after BULK_EMAIL_LOGIN_REFUSAL_HOLD seconds.
    """

    fingerprint = models.CharField(max_length=64, primary_key=True)
    error = models.TextField()
    refused_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.error} ({self.refused_at:%Y-%m-%d %H:%M})"
