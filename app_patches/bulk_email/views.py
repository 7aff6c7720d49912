"""Staff pages of the bulk email ledger: the campaign list, a campaign's progress, retry.

Plain Django templates (templates/bulk_email/), no build step, readable on
a phone. Every view is staff only (staff_member_required: anonymous users
and non-staff are sent to the admin login, and never see a recipient) and
404s for an unknown id. The progress page polls ``campaign_status``, the
JSON view scripts and dashboards use too; the retry button POSTs (CSRF
protected) to ``campaign_retry``, which runs bulk_email.retry, the code of
``manage.py retry_failed``, and never sends inside the request.
"""
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from .models import Campaign, Delivery
from .retry import retry_campaign

PER_PAGE = 50
# Problem rows listed on a campaign's page; the rest is counted (the admin lists them all).
PROBLEMS_SHOWN = 100


def progress(campaign: Campaign) -> dict:
    """The ledger counts plus what the page and its poller need: total, done, percent."""
    counts = campaign.counts()
    total = sum(counts.values())
    finished = counts["sent"] + counts["failed"]
    return {
        **counts,
        "total": total,
        "finished": finished,
        "done": counts["pending"] == 0,
        "percent": 100 if not total else finished * 100 // total,
    }


@staff_member_required
@require_GET
def campaign_list(request: HttpRequest) -> HttpResponse:
    """Every campaign, newest first, with its counts (one query per page, not per row)."""
    status = "deliveries__status"
    campaigns = Campaign.objects.order_by("-created_at").annotate(
        sent=Count("deliveries", filter=Q(**{status: Delivery.Status.SENT})),
        failed=Count("deliveries", filter=Q(**{status: Delivery.Status.FAILED})),
        pending=Count("deliveries", filter=Q(**{status: Delivery.Status.PENDING})),
    )
    page = Paginator(campaigns, PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "bulk_email/campaign_list.html", {"page": page})


@staff_member_required
@require_GET
def campaign_detail(request: HttpRequest, campaign_id: str) -> HttpResponse:
    """One campaign's progress, its failed recipients and the pending ones with an error."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    problems = campaign.deliveries.filter(
        Q(status=Delivery.Status.FAILED) | (Q(status=Delivery.Status.PENDING) & ~Q(last_error=""))
    ).order_by("status", "pk")
    count = problems.count()
    return render(request, "bulk_email/campaign_detail.html", {
        "campaign": campaign,
        "progress": progress(campaign),
        "problems": problems[:PROBLEMS_SHOWN],
        "problems_count": count,
        "problems_hidden": max(count - PROBLEMS_SHOWN, 0),
    })


@staff_member_required
@require_GET
def campaign_status(request: HttpRequest, campaign_id: str) -> JsonResponse:
    """The ledger counts of one campaign as JSON; recipients stay out of it on purpose."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    state = progress(campaign)
    return JsonResponse(
        {
            "id": str(campaign.id),
            "subject": campaign.subject,
            "mode": campaign.mode,
            "created_at": campaign.created_at.isoformat(),
            **{key: state[key] for key in ("pending", "sent", "failed", "total", "done")},
        }
    )


@staff_member_required
@require_POST
def campaign_retry(request: HttpRequest, campaign_id: str) -> HttpResponse:
    """Re-queue the failed and pending deliveries (bulk_email.retry, as retry_failed does)."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    summary = retry_campaign(campaign, include_failed=True, wait=False)
    if not summary["deliveries"]:
        messages.info(request, "Nothing to retry: every delivery was sent.")
    elif summary["held"]:
        messages.info(request, f"Re-queued {summary['deliveries']} deliveries; held until the queue "
                               "mode switch completes.")
    else:
        messages.success(request, f"Re-queued {summary['deliveries']} deliveries "
                                  f"({summary['revived']} of them had failed).")
    return redirect("bulk_email:campaign-detail", campaign_id=campaign.id)
