"""bulk_email.modes: one object per queue mode, found by name, importable before Django is set up."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from bulk_email import modes
from bulk_email.modes.table import NEEDS
from bulk_email.settings import installed_apps

APP_PATCHES = Path(__file__).resolve().parents[2]
URLS = {
    "BULK_EMAIL_REDIS_URL": "redis://app:secret@127.0.0.1:6379/0",
    "BULK_EMAIL_CELERY_BROKER_URL": "redis://app:secret@127.0.0.1:6379/1",
}


def test_every_mode_of_the_table_has_its_module():
    assert tuple(modes.MODES) == modes.NAMES == ("batch", "rq", "celery")
    for name, mode in modes.MODES.items():
        assert mode.name == name
        assert mode.needs is NEEDS[name]
        assert installed_apps(name) == list(NEEDS[name].installed_apps)


def test_an_unknown_mode_is_refused_loudly():
    with pytest.raises(ImproperlyConfigured, match="queue mode 'kafka' is not implemented"):
        modes.get("kafka")


@pytest.mark.parametrize("mode", modes.NAMES)
def test_the_settings_and_modes_import_while_django_is_not_set_up(mode):
    # What the project's settings.py does: star-import bulk_email.settings before Django has
    # apps, models or the queue libraries; none of them may be imported for that.
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "BULK_EMAIL_QUEUE_MODE": mode, **URLS}
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import bulk_email.settings as s, bulk_email.modes\n"
        "loaded = sorted(m for m in ('bulk_email.models', 'django.db.models', 'rq', 'celery', 'django_rq')"
        " if m in sys.modules)\n"
        "print(s.BULK_EMAIL_QUEUE_MODE, loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(APP_PATCHES)], env=env,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(None, 1) == [mode, "[]\n"]


def test_apply_reads_the_mode_table_without_django():
    # -S: no site-packages, as the target's system python3 has no Django.
    result = subprocess.run([sys.executable, "-S", str(APP_PATCHES / "apply.py"), "--help"],
                            env={"PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--mode {batch,rq,celery}" in result.stdout
