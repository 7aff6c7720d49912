"""URLs the project mounts through the block apply.py adds to its urls.py (namespace bulk_email).

A contract (the example app's patched view and end-to-end tests use these names):
bulk-email/ campaign-list, bulk-email/campaigns/<uuid>/ campaign-detail (HTML
progress), .../status/ campaign-status (JSON), .../retry/ campaign-retry (POST).
The django-rq dashboard (/django-rq/) is mounted by that block itself in rq
mode (apply.py --mode rq), so batch projects never import django_rq.
"""
from django.urls import path

from . import views

app_name = "bulk_email"

urlpatterns = [
    path("bulk-email/", views.campaign_list, name="campaign-list"),
    path("bulk-email/campaigns/<uuid:campaign_id>/", views.campaign_detail, name="campaign-detail"),
    path("bulk-email/campaigns/<uuid:campaign_id>/status/", views.campaign_status, name="campaign-status"),
    path("bulk-email/campaigns/<uuid:campaign_id>/retry/", views.campaign_retry, name="campaign-retry"),
]
