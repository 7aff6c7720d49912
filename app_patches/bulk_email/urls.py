"""URLs the project mounts through the block apply.py adds to its urls.py.

The django-rq dashboard (/django-rq/) is mounted by that block itself in rq
mode (apply.py --mode rq), so batch projects never import django_rq.
"""
from django.urls import path

from . import views

app_name = "bulk_email"

urlpatterns = [
    path(
        "bulk-email/campaigns/<uuid:campaign_id>/",
        views.campaign_status,
        name="campaign-status",
    ),
]
