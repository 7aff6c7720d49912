"""Staff-only JSON view of a campaign's progress (for dashboards and scripts)."""
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404

from .models import Campaign


@staff_member_required
def campaign_status(request: HttpRequest, campaign_id: str) -> JsonResponse:
    """Return the ledger counts of one campaign; recipients stay out of it on purpose."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    return JsonResponse(
        {
            "id": str(campaign.id),
            "subject": campaign.subject,
            "mode": campaign.mode,
            "created_at": campaign.created_at.isoformat(),
            **campaign.counts(),
        }
    )
