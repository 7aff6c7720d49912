"""bulk_email.settings: defaults from the guide, and clear errors for bad values."""
import importlib
import ssl

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
        "BULK_EMAIL_CLAIM_TIMEOUT": 300,
        "BULK_EMAIL_HOLD_FILE": "",
        "BULK_EMAIL_BATCH_SPOOL_DIR": "",
        "EMAIL_USE_LOCALTIME": False,
        "BULK_EMAIL_RQ_RETRY_INTERVALS": [10, 30, 60, 300, 900],
        "BULK_EMAIL_INSTALLED_APPS": ["bulk_email"],
    }


@pytest.mark.parametrize(("raw", "expected"), [("true", True), (" Yes ", True), ("1", True), ("false", False), ("", False)])
def test_email_use_localtime_from_the_environment(raw, expected):
    assert load({"EMAIL_USE_LOCALTIME": raw})["EMAIL_USE_LOCALTIME"] is expected


def test_email_use_localtime_refuses_a_typo():
    with pytest.raises(ImproperlyConfigured, match="EMAIL_USE_LOCALTIME must be true or false, got 'ture'"):
        load({"EMAIL_USE_LOCALTIME": "ture"})


def test_batch_spool_dir_from_the_environment():
    values = load({"BULK_EMAIL_BATCH_SPOOL_DIR": " /run/edupulse/batch-spool "})
    assert values["BULK_EMAIL_BATCH_SPOOL_DIR"] == "/run/edupulse/batch-spool"


def test_the_new_settings_are_exported_to_the_project():
    from django.conf import settings

    assert {"EMAIL_USE_LOCALTIME", "BULK_EMAIL_BATCH_SPOOL_DIR"} <= set(bulk_settings.__all__)
    assert settings.EMAIL_USE_LOCALTIME is False and settings.BULK_EMAIL_BATCH_SPOOL_DIR == ""


def test_values_from_environment():
    values = load(
        {
            "BULK_EMAIL_BATCH_SIZE": "50",
            "BULK_EMAIL_BATCH_DELAY": "0",
            "BULK_EMAIL_DAILY_QUOTA": "0",
            "BULK_EMAIL_QUEUE_MODE": " RQ ",
            "BULK_EMAIL_REDIS_URL": "redis://rq-app:secret@127.0.0.1:6379/0",
            "BULK_EMAIL_CLAIM_TIMEOUT": "120",
            "BULK_EMAIL_HOLD_FILE": " /run/edupulse/queue-switch ",
            "BULK_EMAIL_RQ_RETRY_INTERVALS": "5, 60",
            "EMAIL_TIMEOUT": "30",
        }
    )
    assert values["BULK_EMAIL_BATCH_SIZE"] == 50
    assert values["BULK_EMAIL_BATCH_DELAY"] == 0
    assert values["BULK_EMAIL_DAILY_QUOTA"] == 0
    assert values["BULK_EMAIL_QUEUE_MODE"] == "rq"
    assert values["EMAIL_TIMEOUT"] == 30
    assert values["BULK_EMAIL_CLAIM_TIMEOUT"] == 120
    assert values["BULK_EMAIL_HOLD_FILE"] == "/run/edupulse/queue-switch"
    assert values["BULK_EMAIL_RQ_RETRY_INTERVALS"] == [5, 60]


def test_rq_mode_installs_django_rq_and_both_queues_from_one_url():
    url = "redis://rq-app:secret@127.0.0.1:6379/0"
    values = load({"BULK_EMAIL_QUEUE_MODE": "rq", "BULK_EMAIL_REDIS_URL": url})
    assert values["BULK_EMAIL_INSTALLED_APPS"] == ["bulk_email", "django_rq"]
    assert values["RQ_QUEUES"] == {
        "default": {"URL": url, "DEFAULT_TIMEOUT": 360},
        "email": {"URL": url, "DEFAULT_TIMEOUT": 600},
    }
    assert "RQ_QUEUES" not in load({})  # batch mode never configures django-rq


@pytest.mark.parametrize("url", ["", "  "])
def test_rq_mode_requires_the_redis_url(url):
    with pytest.raises(ImproperlyConfigured, match="BULK_EMAIL_REDIS_URL must be set when BULK_EMAIL_QUEUE_MODE=rq"):
        load({"BULK_EMAIL_QUEUE_MODE": "rq", "BULK_EMAIL_REDIS_URL": url})


def test_bad_redis_url_is_rejected_without_showing_the_password():
    with pytest.raises(ImproperlyConfigured, match="BULK_EMAIL_REDIS_URL must start with") as caught:
        load({"BULK_EMAIL_QUEUE_MODE": "rq", "BULK_EMAIL_REDIS_URL": "http://rq-app:s3cret@host/0"})
    assert "s3cret" not in str(caught.value)


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
        ("BULK_EMAIL_CLAIM_TIMEOUT", "0"),
        ("BULK_EMAIL_RQ_RETRY_INTERVALS", "10,soon"),
        ("BULK_EMAIL_RQ_RETRY_INTERVALS", "10,-5"),
    ],
)
def test_invalid_values_raise_improperly_configured_naming_the_variable(name, value):
    with pytest.raises(ImproperlyConfigured, match=name):
        load({name: value})


CELERY_ENV = {
    "BULK_EMAIL_QUEUE_MODE": "celery",
    "BULK_EMAIL_CELERY_BROKER_URL": "redis://celery:secret@127.0.0.1:6379/1",
}


def test_celery_mode_settings_follow_the_guide_and_choose_reliability_on_purpose():
    values = load(CELERY_ENV)

    assert values["BULK_EMAIL_INSTALLED_APPS"] == ["bulk_email", "django_celery_beat", "django_celery_results"]
    assert values["CELERY_BROKER_URL"] == CELERY_ENV["BULK_EMAIL_CELERY_BROKER_URL"]
    assert values["CELERY_TIMEZONE"] == "Australia/Perth"
    assert values["CELERY_ACCEPT_CONTENT"] == ["json"]
    assert values["CELERY_TASK_SERIALIZER"] == values["CELERY_RESULT_SERIALIZER"] == "json"
    assert values["CELERY_TASK_ROUTES"] == {
        "core.tasks.send_bulk_emails": {"queue": "email"},
        "core.tasks.send_single_email": {"queue": "email"},
        "bulk_email.tasks.send_batch": {"queue": "email"},
    }
    assert values["CELERY_TASK_ANNOTATIONS"] == {"core.tasks.send_bulk_emails": {"rate_limit": "10/m"}}
    assert values["CELERY_TASK_ACKS_LATE"] and values["CELERY_TASK_REJECT_ON_WORKER_LOST"]
    assert values["CELERY_WORKER_PREFETCH_MULTIPLIER"] == 1
    assert values["CELERY_RESULT_BACKEND"] == "django-db"
    assert values["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"] == 3600
    assert values["CELERY_BEAT_SCHEDULER"] == "django_celery_beat.schedulers:DatabaseScheduler"
    assert not any(name.startswith("CELERY_") for name in load({}))  # batch mode has none


def test_celery_mode_accepts_a_rabbitmq_broker_and_a_shorter_visibility_timeout():
    values = load({
        **CELERY_ENV,
        "BULK_EMAIL_CELERY_BROKER_URL": "amqp://edupulse:secret@127.0.0.1:5672/edupulse",
        "BULK_EMAIL_CELERY_TASK_TIME_LIMIT": "60",
        "BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX": "30",
        "BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT": "150",
    })
    assert values["CELERY_BROKER_URL"].startswith("amqp://")
    assert values["CELERY_TASK_TIME_LIMIT"] == 60
    assert values["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"] == 150


def test_celery_mode_verifies_a_tls_redis_broker_and_leaves_plain_ones_alone():
    """A rediss:// broker (Redis on another host) gets certificate checks; Celery refuses it without."""
    tls = load({**CELERY_ENV, "BULK_EMAIL_CELERY_BROKER_URL": "rediss://celery:secret@10.0.0.5:6380/1"})
    assert tls["CELERY_BROKER_USE_SSL"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert "CELERY_BROKER_USE_SSL" not in load(CELERY_ENV)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BULK_EMAIL_CELERY_BROKER_URL": ""}, "BULK_EMAIL_CELERY_BROKER_URL must be set"),
        ({"BULK_EMAIL_CELERY_BROKER_URL": "sqs://k:s3cret@x"}, "BULK_EMAIL_CELERY_BROKER_URL must start with"),
        # Redelivery loop (Celery #2599, #7009): shorter than a task plus its longest retry wait.
        ({"BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT": "600"}, "BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT must be >= 1260"),
        ({"BULK_EMAIL_CELERY_TASK_TIME_LIMIT": "0"}, "BULK_EMAIL_CELERY_TASK_TIME_LIMIT"),
        ({"BULK_EMAIL_CELERY_MAX_RETRIES": "-1"}, "BULK_EMAIL_CELERY_MAX_RETRIES"),
    ],
)
def test_celery_mode_rejects_bad_values_without_showing_the_password(env, message):
    with pytest.raises(ImproperlyConfigured, match=message) as caught:
        load({**CELERY_ENV, **env})
    assert "s3cret" not in str(caught.value) and "secret" not in str(caught.value)


def test_module_import_fails_on_invalid_environment(monkeypatch):
    monkeypatch.setenv("BULK_EMAIL_BATCH_SIZE", "0")
    try:
        with pytest.raises(ImproperlyConfigured, match="BULK_EMAIL_BATCH_SIZE must be >= 1"):
            importlib.reload(bulk_settings)
    finally:
        monkeypatch.delenv("BULK_EMAIL_BATCH_SIZE")
        importlib.reload(bulk_settings)


def test_star_import_exports_only_its_own_settings():
    # The test project runs in rq mode, so RQ_QUEUES is exported too.
    assert "EMAIL_HOST" not in bulk_settings.__all__
    assert "RQ_QUEUES" in bulk_settings.__all__
    own = {"EMAIL_TIMEOUT", "EMAIL_USE_LOCALTIME", "RQ_QUEUES", "RQ"}  # RQ: rqworker's worker class (rq_worker.py)
    assert all(name.startswith("BULK_EMAIL_") or name in own for name in bulk_settings.__all__)
    assert all(hasattr(bulk_settings, name) for name in bulk_settings.__all__)


def test_project_settings_include_the_app_and_keep_the_users_email_settings(settings):
    assert settings.INSTALLED_APPS.count("bulk_email") == 1
    assert settings.INSTALLED_APPS[-2:] == ["bulk_email", "django_rq"]  # rq mode (test project)
    assert settings.RQ_QUEUES["email"]["DEFAULT_TIMEOUT"] == 600
    assert "core" in settings.INSTALLED_APPS
    # The test environment sets EMAIL_HOST=127.0.0.1 for the project; the app must not touch it.
    assert settings.EMAIL_HOST == "127.0.0.1"
    assert settings.EMAIL_TIMEOUT == 60
