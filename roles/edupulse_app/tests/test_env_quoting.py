"""Every env file of the deployment (the app's, the rq workers', Celery's, Flower's) holds any
password intact, as systemd reads it (EnvironmentFile=: double quotes, backslash escapes), and
every broker URL carries it URL-encoded, so that the URL's parts come back as they were. A value
with a line break cannot be written at all: the render fails and names the variable."""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

# The characters that break an env file ("\ $ `) or a URL (% @ / : # and a space) unescaped.
TRICKY = 'q"b\\s$d%e@f/g:h#i`j k\'l'
PASSWORDS = {
    "edupulse_redis_app_password": "redis-app-" + TRICKY,
    "edupulse_redis_rq_worker_password": "redis-rq-" + TRICKY,
    "edupulse_redis_celery_worker_password": "redis-celery-" + TRICKY,
    "edupulse_rabbitmq_app_password": "rabbit-app-" + TRICKY,
    "edupulse_rabbitmq_celery_worker_password": "rabbit-celery-" + TRICKY,
    "edupulse_flower_password": "flower-" + TRICKY,
    "edupulse_postgresql_password": "pg-" + TRICKY,
    "edupulse_django_secret_key": "secret-key-" + TRICKY * 3,
    "edupulse_app_email_password": "smtp-" + TRICKY,
}
APP = {**PASSWORDS, "edupulse_app_email_user": "mailer@example.org", "edupulse_app_database_host": "10.0.0.5"}
JOBS = [
    {"name": "app-rq", "template": "edupulse.env.j2", "vars": {**APP, "queue_mode": "rq"}},
    {"name": "app-celery-redis", "template": "edupulse.env.j2", "vars": {**APP, "queue_mode": "celery"}},
    {"name": "app-celery-rabbitmq", "template": "edupulse.env.j2",
     "vars": {**APP, "queue_mode": "celery", "celery_broker": "rabbitmq"}},
    {"name": "rqworker", "role": "rqworker", "template": "rqworker.env.j2", "vars": {**PASSWORDS, "queue_mode": "rq"}},
    {"name": "celery-redis", "role": "celery", "template": "celery.env.j2", "vars": {**PASSWORDS, "queue_mode": "celery"}},
    {"name": "celery-rabbitmq", "role": "celery", "template": "celery.env.j2",
     "vars": {**PASSWORDS, "queue_mode": "celery", "celery_broker": "rabbitmq"}},
    {"name": "flower", "role": "celery", "template": "flower.env.j2", "vars": {**PASSWORDS, "queue_mode": "celery"}},
]
# (file, variable, user, password, host:port, path) of every broker URL in them.
URLS = [
    ("app-rq", "BULK_EMAIL_REDIS_URL", "edupulse-app", "edupulse_redis_app_password", "127.0.0.1:6379", "/0"),
    ("app-celery-redis", "BULK_EMAIL_CELERY_BROKER_URL", "edupulse-app", "edupulse_redis_app_password", "127.0.0.1:6379", "/1"),
    ("app-celery-redis", "CELERY_BROKER_URL", "edupulse-app", "edupulse_redis_app_password", "127.0.0.1:6379", "/1"),
    ("app-celery-rabbitmq", "BULK_EMAIL_CELERY_BROKER_URL", "edupulse-app", "edupulse_rabbitmq_app_password",
     "127.0.0.1:5672", "/edupulse"),
    ("app-celery-rabbitmq", "CELERY_BROKER_URL", "edupulse-app", "edupulse_rabbitmq_app_password", "127.0.0.1:5672", "/edupulse"),
    ("rqworker", "BULK_EMAIL_REDIS_URL", "rq-worker", "edupulse_redis_rq_worker_password", "127.0.0.1:6379", "/0"),
    ("celery-redis", "BULK_EMAIL_CELERY_BROKER_URL", "celery-worker", "edupulse_redis_celery_worker_password",
     "127.0.0.1:6379", "/1"),
    ("celery-redis", "CELERY_BROKER_URL", "celery-worker", "edupulse_redis_celery_worker_password", "127.0.0.1:6379", "/1"),
    ("celery-rabbitmq", "BULK_EMAIL_CELERY_BROKER_URL", "celery-worker", "edupulse_rabbitmq_celery_worker_password",
     "127.0.0.1:5672", "/edupulse"),
    ("celery-rabbitmq", "CELERY_BROKER_URL", "celery-worker", "edupulse_rabbitmq_celery_worker_password",
     "127.0.0.1:5672", "/edupulse"),
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, render_templates) -> dict[str, str]:
    return render_templates(tmp_path_factory.mktemp("quoting"), JOBS)


@pytest.fixture(scope="module")
def env_files(rendered, systemd_env) -> dict[str, dict[str, str]]:
    return {name: systemd_env(text) for name, text in rendered.items()}


@pytest.mark.parametrize("name", ["app-rq", "app-celery-redis", "app-celery-rabbitmq"])
def test_the_app_env_file_holds_its_secrets_intact(env_files, name):
    env = env_files[name]
    assert env["EMAIL_HOST_PASSWORD"] == env["SMTP_PASSWORD"] == PASSWORDS["edupulse_app_email_password"]
    assert env["DJANGO_SECRET_KEY"] == PASSWORDS["edupulse_django_secret_key"]
    assert env["DJANGO_DB_PASSWORD"] == PASSWORDS["edupulse_postgresql_password"]


@pytest.mark.parametrize(("name", "key", "user", "password", "address", "path"), URLS,
                         ids=[f"{name}:{key}" for name, key, *_ in URLS])
def test_each_broker_url_carries_the_password_url_encoded(env_files, name, key, user, password, address, path):
    url = urlsplit(env_files[name][key])
    assert (unquote(url.username), unquote(url.password)) == (user, PASSWORDS[password])
    assert (f"{url.hostname}:{url.port}", url.path, url.query, url.fragment) == (address, path, "", "")


def test_the_rq_guide_names_come_from_the_encoded_url(env_files):
    env = env_files["app-rq"]
    assert (env["REDIS_HOST"], env["REDIS_PORT"], env["REDIS_DB"]) == ("127.0.0.1", "6379", "0")


def test_the_celery_result_backend_holds_no_credential(env_files):
    """bulk_email.settings' result backend is the database (django-celery-results), not a URL."""
    for name in ("app-celery-redis", "app-celery-rabbitmq"):
        assert env_files[name]["CELERY_RESULT_BACKEND"] == "django-db"


def test_flower_gets_its_basic_auth_intact(env_files):
    assert env_files["flower"]["FLOWER_BASIC_AUTH"] == "flower:" + PASSWORDS["edupulse_flower_password"]


def test_every_value_is_one_double_quoted_line(rendered):
    for name, text in rendered.items():
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                assert key.isidentifier() and value.startswith('"') and value.endswith('"'), (name, line)


@pytest.mark.parametrize(("template", "role", "variables", "named"), [
    ("edupulse.env.j2", "edupulse_app", {"edupulse_app_email_password": "first\nINJECTED=1"}, "EMAIL_HOST_PASSWORD"),
    ("edupulse.env.j2", "edupulse_app", {"edupulse_app_env_extra": {"NOTE": "a\rb"}}, "NOTE"),
    ("flower.env.j2", "celery", {"edupulse_flower_password": "first\nsecond"}, "FLOWER_BASIC_AUTH"),
])
def test_a_line_break_is_refused_naming_the_variable(tmp_path, render_templates, template, role, variables, named):
    """Nothing writes a value that would end its line (playbooks/preflight.yml refuses such a
    secret first, naming the inventory's variable); a URL-encoded password holds it as %0A."""
    job = {"name": "broken", "role": role, "template": template,
           "vars": {"edupulse_app_secret_key": "k" * 40, "queue_mode": "rq", **variables}}
    result = render_templates(tmp_path, [job], check=False)
    assert "_failed" in result, result
    assert f"{named} contains a line break" in result["_failed"]
