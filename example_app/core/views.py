"""Views of the EduPulse site."""
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from .forms import BulkEmailForm
from .mail import send_bulk_email


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer "ok" without touching the database, so deploy checks test the app server itself."""
    return HttpResponse("ok", content_type="text/plain")


@staff_member_required
def bulk_email(request: HttpRequest) -> HttpResponse:
    """Let staff send an announcement to a list of addresses (synchronously, see core.mail)."""
    form = BulkEmailForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        sent = send_bulk_email(
            form.cleaned_data["subject"],
            form.cleaned_data["body"],
            form.cleaned_data["recipients"],
        )
        messages.success(request, f"Sent {sent} message(s).")
        return redirect("bulk-email")
    return render(request, "core/bulk_email.html", {"form": form})
