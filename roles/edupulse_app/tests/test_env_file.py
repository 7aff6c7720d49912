"""The env file (templates/edupulse.env.j2) also speaks the guide's names, with the values the
deployment really uses, in each queue mode: code written after the guide (SMTP_SERVER,
REDIS_HOST, CELERY_BROKER_URL, ...) keeps working on a deployed host."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]

SMTP = {
    "edupulse_app_email_host": "smtp.example.org",
    "edupulse_app_email_port": 2525,
    "edupulse_app_email_user": "mailer@example.org",
    "edupulse_app_email_password": 'app pass "quoted"',
}
COMMON = {"edupulse_app_secret_key": "k" * 40, **SMTP}
MODES = {
    "batch": {"edupulse_app_queue_mode": "batch"},
    "rq": {"edupulse_app_queue_mode": "rq",
           "edupulse_app_redis_url": "redis://edupulse-web:s3cret@10.0.0.7:6380/3"},
    "celery": {"edupulse_app_queue_mode": "celery",
               "edupulse_app_celery_broker_url": "redis://edupulse-celery-web:pw@127.0.0.1:6379/1"},
    "batch-localtime": {"edupulse_app_queue_mode": "batch", "edupulse_app_email_use_localtime": True},
    "rq-default-port": {"edupulse_app_queue_mode": "rq",
                        "edupulse_app_redis_url": "rediss://edupulse-web:pw@redis.internal/0"},
    # celery mode with the RabbitMQ broker, the broker URL derived by roles/edupulse.
    "celery-rabbitmq": {"queue_mode": "celery", "celery_broker": "rabbitmq"},
    "celery-rabbitmq-2h": {"queue_mode": "celery", "celery_broker": "rabbitmq", "rabbitmq_consumer_timeout": 7200000},
}


@pytest.fixture(scope="module")
def env_files(tmp_path_factory, render_templates, systemd_env) -> dict[str, dict[str, str]]:
    out = tmp_path_factory.mktemp("env")
    jobs = [{"name": mode, "template": "edupulse.env.j2", "vars": {**COMMON, **extra}} for mode, extra in MODES.items()]
    return {name: systemd_env(text) for name, text in render_templates(out, jobs).items()}


@pytest.mark.parametrize("mode", ["batch", "rq", "celery"])
def test_guide_smtp_names_carry_the_django_values(env_files, mode):
    env = env_files[mode]
    assert env["SMTP_SERVER"] == env["EMAIL_HOST"] == "smtp.example.org"
    assert env["SMTP_PORT"] == env["EMAIL_PORT"] == "2525"
    assert env["SMTP_USERNAME"] == env["EMAIL_HOST_USER"] == "mailer@example.org"
    assert env["SMTP_PASSWORD"] == env["EMAIL_HOST_PASSWORD"] == 'app pass "quoted"'


def test_email_use_localtime_defaults_to_false_and_follows_the_variable(env_files):
    assert env_files["batch"]["EMAIL_USE_LOCALTIME"] == "false"
    assert env_files["batch-localtime"]["EMAIL_USE_LOCALTIME"] == "true"


def test_rq_mode_has_the_guides_redis_names_from_the_deployments_url(env_files):
    env = env_files["rq"]
    assert (env["REDIS_HOST"], env["REDIS_PORT"], env["REDIS_DB"]) == ("10.0.0.7", "6380", "3")
    default = env_files["rq-default-port"]
    assert (default["REDIS_HOST"], default["REDIS_PORT"], default["REDIS_DB"]) == ("redis.internal", "6379", "0")


def test_celery_mode_has_the_guides_celery_names(env_files):
    env = env_files["celery"]
    assert env["CELERY_BROKER_URL"] == env["BULK_EMAIL_CELERY_BROKER_URL"]
    # bulk_email.settings' result backend (django-celery-results).
    assert env["CELERY_RESULT_BACKEND"] == "django-db"


def test_each_mode_has_only_its_own_names(env_files):
    assert "BULK_EMAIL_BATCH_SPOOL_DIR" in env_files["batch"]
    for mode in ("rq", "celery"):
        assert "BULK_EMAIL_BATCH_SPOOL_DIR" not in env_files[mode]
    for mode in ("batch", "celery"):
        assert not {"REDIS_HOST", "REDIS_PORT", "REDIS_DB"} & set(env_files[mode])
    for mode in ("batch", "rq"):
        assert not {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"} & set(env_files[mode])


def test_batch_mode_names_the_spool_directory_under_the_state_dir(env_files):
    assert env_files["batch"]["BULK_EMAIL_BATCH_SPOOL_DIR"] == "/var/lib/edupulse/batch-spool"


def test_celery_mode_with_rabbitmq_carries_the_brokers_consumer_timeout_in_seconds(env_files):
    """The app checks its task time limit and waits against RabbitMQ's consumer_timeout: the
    value roles/rabbitmq writes into rabbitmq.conf (milliseconds), not the app's own default."""
    broker_default_ms = yaml.safe_load((REPO / "roles/rabbitmq/defaults/main.yml").read_text())["rabbitmq_consumer_timeout"]
    env = env_files["celery-rabbitmq"]
    assert env["BULK_EMAIL_CELERY_BROKER_URL"].startswith("amqp://")
    assert env["BULK_EMAIL_CELERY_CONSUMER_TIMEOUT"] == str(broker_default_ms // 1000)
    assert env_files["celery-rabbitmq-2h"]["BULK_EMAIL_CELERY_CONSUMER_TIMEOUT"] == "7200"


def test_consumer_timeout_only_with_the_rabbitmq_broker(env_files):
    for mode in ("batch", "rq", "celery"):
        assert "BULK_EMAIL_CELERY_CONSUMER_TIMEOUT" not in env_files[mode]
