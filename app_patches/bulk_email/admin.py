"""Read-mostly admin: the ledger is written by the sender, people only look at it."""
from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from .models import Campaign, Delivery


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ("recipient", "status", "attempts", "sent_at", "last_error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Campaign | None = None) -> bool:
        return False


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("subject", "id", "mode", "created_at")
    readonly_fields = (
        "progress", "id", "subject", "body", "html_body", "from_email", "mode", "created_at", "dispatched_at",
    )
    search_fields = ("subject", "id")
    inlines = [DeliveryInline]

    @admin.display(description="Progress")
    def progress(self, obj: Campaign) -> str:
        """Link to the staff progress page (live counts, failed recipients, retry button)."""
        if obj.pk is None:
            return "-"
        return format_html('<a href="{}">View progress</a>', reverse("bulk_email:campaign-detail", args=[obj.pk]))

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Campaigns are created by send_campaign or the site's own views.
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("recipient", "campaign", "status", "attempts", "sent_at")
    list_filter = ("status",)
    search_fields = ("recipient", "campaign__id")
    # Only the status is editable: setting a failed delivery back to pending
    # is how an operator asks for it to be tried again.
    readonly_fields = ("campaign", "recipient", "attempts", "last_error", "sent_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
