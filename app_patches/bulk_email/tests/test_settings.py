"""bulk_email.settings: defaults from the guide, and clear errors for bad values."""
import importlib

import pytest
from django.core.exceptions import ImproperlyConfigured

import bulk_email.settings as bulk_settings
from bulk_email.settings import load


def test_defaults():
    values = load({})
    assert values == {
        "EMAIL_TIMEOUT": 60,
        "BULK_EMAIL_BATCH_SIZE": 20,
        "BULK_EMAIL_BATCH_DELAY": 0.5,
        "BULK_EMAIL_QUEUE_MODE": "batch",
        "BULK_EMAIL_DAILY_QUOTA": 500,
        "BULK_EMAIL_MAX_ATTEMPTS": 5,
        "BULK_EMAIL_RETRY_BACKOFF": 2,
        "BULK_EMAIL_RETRY_BACKOFF_MAX": 60,
        "BULK_EMAIL_QUOTA_HOOK": "bulk_email.quota.daily_quota",
        "BULK_EMAIL_INSTALLED_APPS": ["bulk_email"],
    }


def test_values_from_environment():
    values = load(
        {
            "BULK_EMAIL_BATCH_SIZE": "50",
            "BULK_EMAIL_BATCH_DELAY": "0",
            "BULK_EMAIL_DAILY_QUOTA": "0",
            "BULK_EMAIL_QUEUE_MODE": " RQ ",
            "EMAIL_TIMEOUT": "30",
        }
    )
    assert values["BULK_EMAIL_BATCH_SIZE"] == 50
    assert values["BULK_EMAIL_BATCH_DELAY"] == 0
    assert values["BULK_EMAIL_DAILY_QUOTA"] == 0
    assert values["BULK_EMAIL_QUEUE_MODE"] == "rq"
    assert values["EMAIL_TIMEOUT"] == 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BULK_EMAIL_BATCH_SIZE", "0"),
        ("BULK_EMAIL_BATCH_SIZE", "-5"),
        ("BULK_EMAIL_BATCH_SIZE", "2O"),
        ("BULK_EMAIL_BATCH_SIZE", "2.5"),
        ("BULK_EMAIL_BATCH_DELAY", "-0.1"),
        ("BULK_EMAIL_BATCH_DELAY", "half a second"),
        ("BULK_EMAIL_QUEUE_MODE", "kafka"),
        ("BULK_EMAIL_DAILY_QUOTA", "-1"),
        ("BULK_EMAIL_DAILY_QUOTA", "lots"),
        ("BULK_EMAIL_MAX_ATTEMPTS", "0"),
        ("BULK_EMAIL_RETRY_BACKOFF", "-2"),
        ("EMAIL_TIMEOUT", "0"),
    ],
)
def test_invalid_values_raise_improperly_configured_naming_the_variable(name, value):
    with pytest.raises(ImproperlyConfigured, match=name):
        load({name: value})


def test_module_import_fails_on_invalid_environment(monkeypatch):
    monkeypatch.setenv("BULK_EMAIL_BATCH_SIZE", "0")
    try:
        with pytest.raises(ImproperlyConfigured, match="BULK_EMAIL_BATCH_SIZE must be >= 1"):
            importlib.reload(bulk_settings)
    finally:
        monkeypatch.delenv("BULK_EMAIL_BATCH_SIZE")
        importlib.reload(bulk_settings)


def test_star_import_exports_only_its_own_settings():
    assert "EMAIL_HOST" not in bulk_settings.__all__
    assert all(name.startswith("BULK_EMAIL_") or name == "EMAIL_TIMEOUT" for name in bulk_settings.__all__)
    assert all(hasattr(bulk_settings, name) for name in bulk_settings.__all__)


def test_project_settings_include_the_app_and_keep_the_users_email_settings(settings):
    assert settings.INSTALLED_APPS.count("bulk_email") == 1
    assert settings.INSTALLED_APPS[-1] == "bulk_email"
    assert "core" in settings.INSTALLED_APPS
    # The test environment sets EMAIL_HOST=127.0.0.1 for the project; the app must not touch it.
    assert settings.EMAIL_HOST == "127.0.0.1"
    assert settings.EMAIL_TIMEOUT == 60
