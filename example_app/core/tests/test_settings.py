"""edupulse/settings.py read from the environment, loaded in a fresh interpreter each time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE_APP = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, django; from django.conf import settings; "
    "print(json.dumps({k: getattr(settings, k) for k in "
    "['DEBUG', 'ALLOWED_HOSTS', 'CSRF_TRUSTED_ORIGINS', 'DATABASES', 'STATIC_ROOT', 'MEDIA_ROOT', 'MEDIA_URL', 'EMAIL_BACKEND', "
    "'EMAIL_HOST', 'EMAIL_PORT', 'EMAIL_USE_TLS', 'EMAIL_USE_SSL', 'DEFAULT_FROM_EMAIL', 'LOG_LEVEL']}))"
)


def load_settings(**env: str) -> subprocess.CompletedProcess:
    """Import the unpatched example settings with exactly the given variables."""
    base = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "edupulse.settings"}
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=EXAMPLE_APP, env={**base, **env},
        capture_output=True, text=True, check=False, timeout=60,
    )


def values(**env: str) -> dict:
    result = load_settings(**env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_defaults():
    loaded = values(DJANGO_SECRET_KEY="k")
    assert loaded["DEBUG"] is False
    assert loaded["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1"]
    assert loaded["CSRF_TRUSTED_ORIGINS"] == []
    database = loaded["DATABASES"]["default"]
    assert database["NAME"] == str(EXAMPLE_APP / "db.sqlite3")
    assert database["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in database["OPTIONS"]["init_command"]
    assert loaded["STATIC_ROOT"] == str(EXAMPLE_APP / "staticfiles")
    assert (loaded["MEDIA_ROOT"], loaded["MEDIA_URL"]) == (str(EXAMPLE_APP / "media"), "/media/")
    assert loaded["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert (loaded["EMAIL_HOST"], loaded["EMAIL_PORT"]) == ("localhost", 587)
    assert (loaded["EMAIL_USE_TLS"], loaded["EMAIL_USE_SSL"]) == (True, False)
    assert loaded["LOG_LEVEL"] == "INFO"


def test_values_from_environment(tmp_path):
    loaded = values(
        DJANGO_SECRET_KEY="k",
        DJANGO_ALLOWED_HOSTS="edupulse.example, www.edupulse.example",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://edupulse.example",
        DJANGO_SQLITE_PATH=str(tmp_path / "site.db"),
        DJANGO_STATIC_ROOT=str(tmp_path / "static"),
        DJANGO_MEDIA_ROOT=str(tmp_path / "media"),
        DJANGO_MEDIA_URL="/uploads/",
        EMAIL_HOST="smtp.gmail.com",
        EMAIL_PORT="465",
        EMAIL_USE_TLS="false",
        EMAIL_USE_SSL="true",
        DEFAULT_FROM_EMAIL="office@school.test",
        DJANGO_LOG_LEVEL="debug",
    )
    assert loaded["ALLOWED_HOSTS"] == ["edupulse.example", "www.edupulse.example"]
    assert loaded["CSRF_TRUSTED_ORIGINS"] == ["https://edupulse.example"]
    assert loaded["DATABASES"]["default"]["NAME"] == str(tmp_path / "site.db")
    assert loaded["STATIC_ROOT"] == str(tmp_path / "static")
    assert (loaded["MEDIA_ROOT"], loaded["MEDIA_URL"]) == (str(tmp_path / "media"), "/uploads/")
    assert (loaded["EMAIL_HOST"], loaded["EMAIL_PORT"]) == ("smtp.gmail.com", 465)
    assert (loaded["EMAIL_USE_TLS"], loaded["EMAIL_USE_SSL"]) == (False, True)
    assert loaded["DEFAULT_FROM_EMAIL"] == "office@school.test"
    assert loaded["LOG_LEVEL"] == "DEBUG"


def test_debug_runs_without_a_secret_key():
    assert values(DJANGO_DEBUG="true")["DEBUG"] is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DJANGO_SECRET_KEY must be set"),
        ({"DJANGO_SECRET_KEY": "k", "DJANGO_DEBUG": "flase"}, "DJANGO_DEBUG must be true or false"),
        ({"DJANGO_SECRET_KEY": "k", "EMAIL_PORT": "smtp"}, "EMAIL_PORT must be an integer"),
        ({"DJANGO_SECRET_KEY": "k", "EMAIL_USE_SSL": "true"}, "EMAIL_USE_TLS and EMAIL_USE_SSL"),
    ],
)
def test_invalid_environment_is_refused(env, message):
    result = load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr
