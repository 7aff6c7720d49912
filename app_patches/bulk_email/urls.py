"""URLs the project mounts through the block apply.py adds to its urls.py.

The rq mode will add the django-rq dashboard (/django-rq/) here.
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
