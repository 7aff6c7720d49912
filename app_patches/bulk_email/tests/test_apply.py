"""app_patches/apply.py on fresh copies of example_app: idempotent, --check, --remove."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

APP_PATCHES = Path(__file__).resolve().parents[2]
APPLY = APP_PATCHES / "apply.py"
EXAMPLE_APP = APP_PATCHES.parent / "example_app"
BEGIN = "# >>> edupulse-queue (managed by app_patches/apply.py; remove with --remove) >>>"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (bytecode excluded)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def apply(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(APPLY), "--project", str(project), *args],
        capture_output=True, text=True, check=False, timeout=60,
    )


def summary(result: subprocess.CompletedProcess) -> dict:
    """The JSON the Ansible role parses: always the last line of stdout."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(EXAMPLE_APP, target, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3*"))
    return target


def test_apply_installs_app_and_blocks(project):
    result = summary(apply(project, "--json"))

    assert result["changed"] is True
    assert {"edupulse/settings.py", "edupulse/urls.py", "bulk_email/sending.py",
            "bulk_email/migrations/0001_initial.py"} <= set(result["files"])
    assert not any("tests" in name or name.endswith(".pyc") for name in result["files"])
    assert (project / "bulk_email/sending.py").read_bytes() == (APP_PATCHES / "bulk_email/sending.py").read_bytes()
    settings = (project / "edupulse/settings.py").read_text()
    assert settings.count(BEGIN) == 1
    assert "from bulk_email.settings import *" in settings
    assert 'include("bulk_email.urls")' in (project / "edupulse/urls.py").read_text()


def test_second_apply_changes_nothing(project):
    summary(apply(project, "--json"))
    after_first = snapshot(project)

    result = summary(apply(project, "--json"))

    assert result == {"changed": False, "files": []}
    assert snapshot(project) == after_first


@pytest.mark.parametrize("mode", ["batch", "rq", "celery"])
def test_every_mode_is_accepted_and_idempotent(project, mode):
    assert summary(apply(project, "--mode", mode, "--json"))["changed"] is True
    assert summary(apply(project, "--mode", mode, "--json"))["changed"] is False


def test_check_reports_changes_and_writes_nothing(project):
    before = snapshot(project)

    result = summary(apply(project, "--check", "--json"))

    assert result["changed"] is True
    assert "edupulse/settings.py" in result["files"]
    assert snapshot(project) == before
    summary(apply(project, "--json"))
    assert summary(apply(project, "--check", "--json")) == {"changed": False, "files": []}


def test_remove_restores_the_original_bytes(project):
    original = snapshot(project)
    summary(apply(project, "--json"))
    (project / "bulk_email/migrations/__pycache__").mkdir()  # as left by running the app
    (project / "bulk_email/migrations/__pycache__/x.pyc").write_bytes(b"\0")

    result = summary(apply(project, "--remove", "--json"))

    assert result["changed"] is True
    assert snapshot(project) == original
    assert not (project / "bulk_email").exists()
    assert summary(apply(project, "--remove", "--json")) == {"changed": False, "files": []}


def test_remove_check_writes_nothing(project):
    summary(apply(project, "--json"))
    applied = snapshot(project)

    assert summary(apply(project, "--remove", "--check", "--json"))["changed"] is True
    assert snapshot(project) == applied


@pytest.mark.parametrize("tail", [b"", b"# no newline at the end", b"x = 1\r\n"])
def test_round_trip_keeps_unusual_file_endings(project, tail):
    settings = project / "edupulse/settings.py"
    settings.write_bytes(settings.read_bytes() + tail)
    original = snapshot(project)

    summary(apply(project, "--json"))
    summary(apply(project, "--remove", "--json"))

    assert snapshot(project) == original


def test_outdated_install_is_updated_in_place(project):
    summary(apply(project, "--json"))
    sending = project / "bulk_email/sending.py"
    sending.write_text("# an older version\n")
    (project / "bulk_email/obsolete.py").write_text("# dropped from the package\n")
    settings = project / "edupulse/settings.py"
    settings.write_text(settings.read_text().replace("from bulk_email.settings import *", "OLD = 1"))
    settings.write_text(settings.read_text() + "\nUSER_SETTING_AFTER_BLOCK = True\n")

    result = summary(apply(project, "--json"))

    assert sorted(result["files"]) == ["bulk_email/obsolete.py", "bulk_email/sending.py", "edupulse/settings.py"]
    assert not (project / "bulk_email/obsolete.py").exists()
    text = settings.read_text()
    assert text.count(BEGIN) == 1 and "OLD = 1" not in text
    assert text.endswith("\nUSER_SETTING_AFTER_BLOCK = True\n")  # the user's later lines are kept


@pytest.mark.parametrize("missing", ["edupulse/settings.py", "edupulse/urls.py"])
def test_missing_project_file_fails_clearly_without_writing(project, missing):
    (project / missing).unlink()
    before = snapshot(project)

    result = apply(project, "--json")

    assert result.returncode != 0
    assert f"{missing} not found" in result.stderr
    assert snapshot(project) == before


def test_wrong_package_name_fails(project):
    result = apply(project, "--package", "mysite")
    assert result.returncode != 0
    assert "mysite/settings.py not found" in result.stderr


def test_refuses_to_overwrite_a_bulk_email_package_it_did_not_create(project):
    (project / "bulk_email").mkdir()
    (project / "bulk_email/__init__.py").write_text("# the user's own app\n")

    for args in ([], ["--remove"]):
        result = apply(project, *args)
        assert result.returncode != 0
        assert "refusing to overwrite" in result.stderr
    assert (project / "bulk_email/__init__.py").read_text() == "# the user's own app\n"


def test_unterminated_block_is_reported(project):
    settings = project / "edupulse/settings.py"
    settings.write_text(settings.read_text() + "\n" + BEGIN + "\nX = 1\n")

    result = apply(project)

    assert result.returncode != 0
    assert "without its end marker" in result.stderr


def test_unknown_mode_is_rejected(project):
    result = apply(project, "--mode", "kafka")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


def test_rq_mode_mounts_the_dashboard_and_switching_back_equals_a_fresh_batch_apply(project, tmp_path):
    fresh = tmp_path / "fresh"
    shutil.copytree(project, fresh)
    summary(apply(fresh, "--mode", "batch", "--json"))
    urls = project / "edupulse/urls.py"

    assert summary(apply(project, "--mode", "rq", "--json"))["changed"] is True
    assert 'include("django_rq.urls")' in urls.read_text()
    assert '"django-rq/"' in urls.read_text()

    result = summary(apply(project, "--mode", "batch", "--json"))

    assert result == {"changed": True, "files": ["edupulse/urls.py"]}
    assert "django_rq" not in urls.read_text()
    assert snapshot(project) == snapshot(fresh)


def test_remove_after_rq_restores_the_original_bytes(project):
    original = snapshot(project)
    summary(apply(project, "--mode", "rq", "--json"))

    summary(apply(project, "--remove", "--json"))

    assert snapshot(project) == original


def test_celery_mode_writes_the_guides_celery_app_and_switching_away_removes_it(project, tmp_path):
    fresh = tmp_path / "fresh"
    shutil.copytree(project, fresh)
    summary(apply(fresh, "--mode", "rq", "--json"))

    summary(apply(project, "--mode", "celery", "--json"))

    celery_app = (project / "edupulse/celery.py").read_text()
    assert 'app.config_from_object("django.conf:settings", namespace="CELERY")' in celery_app
    assert "app.autodiscover_tasks()" in celery_app
    assert "from .celery import app as celery_app" in (project / "edupulse/__init__.py").read_text()
    assert summary(apply(project, "--mode", "celery", "--json"))["changed"] is False

    result = summary(apply(project, "--mode", "rq", "--json"))

    assert sorted(result["files"]) == ["edupulse/__init__.py", "edupulse/celery.py", "edupulse/urls.py"]
    assert snapshot(project) == snapshot(fresh)


def test_remove_after_celery_restores_the_original_bytes(project):
    original = snapshot(project)
    summary(apply(project, "--mode", "celery", "--json"))

    summary(apply(project, "--remove", "--json"))

    assert snapshot(project) == original


def test_refuses_to_overwrite_a_celery_py_it_did_not_write_and_leaves_it_in_other_modes(project):
    own = project / "edupulse/celery.py"
    own.write_text("# the project's own Celery app\n")

    result = apply(project, "--mode", "celery")

    assert result.returncode == 2
    assert "celery.py exists and was not written by apply.py" in result.stderr
    assert not (project / "bulk_email").exists()  # refused before any change
    summary(apply(project, "--mode", "batch", "--json"))
    summary(apply(project, "--remove", "--json"))
    assert own.read_text() == "# the project's own Celery app\n"


EXAMPLE_PATCH = APP_PATCHES / "patches" / "example_app" / "bulk-email-view.patch"


def test_patch_applies_and_a_second_run_changes_nothing(project):
    result = summary(apply(project, "--patch", str(EXAMPLE_PATCH), "--json"))

    assert {"core/views.py", "core/templates/core/bulk_email.html",
            ".edupulse-patches/001-bulk-email-view.patch"} <= set(result["files"])
    views = (project / "core/views.py").read_text()
    assert "from bulk_email.api import guidance, send_bulk_email" in views
    assert 'redirect("bulk_email:campaign-detail", campaign_id=campaign.id)' in views
    assert (project / ".edupulse-patches/001-bulk-email-view.patch").read_bytes() == EXAMPLE_PATCH.read_bytes()
    after_first = snapshot(project)

    assert summary(apply(project, "--patch", str(EXAMPLE_PATCH), "--json")) == {"changed": False, "files": []}
    assert snapshot(project) == after_first


def test_patch_check_reports_and_writes_nothing(project):
    before = snapshot(project)

    result = summary(apply(project, "--patch", str(EXAMPLE_PATCH), "--check", "--json"))

    assert "core/views.py" in result["files"]
    assert snapshot(project) == before
    summary(apply(project, "--patch", str(EXAMPLE_PATCH), "--json"))
    assert summary(apply(project, "--patch", str(EXAMPLE_PATCH), "--check", "--json"))["changed"] is False


def test_remove_reverses_the_patches_and_restores_the_bytes(project):
    original = snapshot(project)
    summary(apply(project, "--mode", "celery", "--patch", str(EXAMPLE_PATCH), "--json"))

    result = summary(apply(project, "--remove", "--json"))

    assert "core/views.py" in result["files"]
    assert snapshot(project) == original
    assert not (project / ".edupulse-patches").exists()


def test_a_patch_no_longer_given_is_reversed(project):
    original_views = (project / "core/views.py").read_bytes()
    summary(apply(project, "--patch", str(EXAMPLE_PATCH), "--json"))

    result = summary(apply(project, "--json"))

    assert "core/views.py" in result["files"]
    assert (project / "core/views.py").read_bytes() == original_views
    assert not (project / ".edupulse-patches").exists()


def test_a_patch_applied_by_hand_is_skipped_and_not_recorded(project):
    subprocess.run(["patch", "-p1", "-s", "-d", str(project), "-i", str(EXAMPLE_PATCH)], check=True)
    patched = snapshot(project)

    result = summary(apply(project, "--patch", str(EXAMPLE_PATCH), "--json"))

    assert "core/views.py" not in result["files"]
    assert not (project / ".edupulse-patches").exists()
    assert {k: v for k, v in snapshot(project).items() if not k.startswith("bulk_email/")
            and not k.startswith("edupulse/")} == {
        k: v for k, v in patched.items() if not k.startswith("edupulse/")}


def test_a_conflicting_patch_fails_cleanly_before_anything_changes(project, tmp_path):
    views = project / "core/views.py"
    views.write_text(views.read_text().replace("sent = send_bulk_email(", "count = send_bulk_email("))
    before = snapshot(project)

    result = apply(project, "--patch", str(EXAMPLE_PATCH), "--json")

    assert result.returncode == 2
    assert "patch bulk-email-view.patch neither applies to" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(project) == before  # no app copied, no block written, no file half-patched


def test_an_unreadable_patch_is_a_clear_error(project, tmp_path):
    result = apply(project, "--patch", str(tmp_path / "missing.patch"))
    assert result.returncode == 2 and "cannot read patch" in result.stderr
    assert not (project / "bulk_email").exists()
