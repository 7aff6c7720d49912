"""What each queue mode needs of the Django project, as data.

Standard library only, and no import of the package: app_patches/apply.py
loads this file by its path with the target's system python3, before the
project (or Django) is installed, and the mode modules read the same table,
so the apps apply.py's block installs and the ones bulk_email.settings
names can never disagree.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class ProjectNeeds:
    """The apps, URLs and Celery app a mode adds to the project."""

    # INSTALLED_APPS the mode needs (bulk_email.settings.BULK_EMAIL_INSTALLED_APPS).
    installed_apps: tuple[str, ...]
    # (prefix, urlconf) mounted by apply.py's urls block after bulk_email.urls.
    urls: tuple[tuple[str, str], ...] = ()
    # The guide's <package>/celery.py and its import in <package>/__init__.py.
    celery_app: bool = False


NEEDS = {
    "batch": ProjectNeeds(installed_apps=("bulk_email",)),
    # django-rq's dashboard: its views let staff users only in.
    "rq": ProjectNeeds(installed_apps=("bulk_email", "django_rq"), urls=(("django-rq/", "django_rq.urls"),)),
    "celery": ProjectNeeds(
        installed_apps=("bulk_email", "django_celery_beat", "django_celery_results"), celery_app=True
    ),
}
NAMES = tuple(NEEDS)
