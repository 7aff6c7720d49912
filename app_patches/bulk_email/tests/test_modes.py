"""bulk_email.modes: one object per queue mode, found by name, importable before Django is set up,
and the only place that tells the modes apart by name."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from bulk_email import modes
from bulk_email.campaigns import create_campaign
from bulk_email.modes.table import NEEDS
from bulk_email.settings import installed_apps

APP_PATCHES = Path(__file__).resolve().parents[2]
PACKAGE = APP_PATCHES / "bulk_email"
# A mode's own code may name its own mode, and no other: its job or sender checks that a campaign
# is still its mode's (a queue switch may have moved it). It cannot ask bulk_email.modes instead:
# the mode module imports this code, so that would be an import cycle (test_imports).
OWN_MODE = {"rq_jobs.py": "rq", "rq_worker.py": "rq", "tasks.py": "celery", "batch_sender.py": "batch"}
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


def mode_name_branches(source: str) -> list[tuple[int, str]]:
    """(line, name) of each mode name compared with (==, !=, in) or filtered on (``campaign__mode=``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.keyword) and (node.arg or "").endswith("mode"):
            operands = [node.value]
        else:
            continue
        for operand in operands:
            for value in operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]:
                if isinstance(value, ast.Constant) and value.value in modes.NAMES:
                    found.append((node.lineno, value.value))
    return found


def test_the_branch_finder_finds_comparisons_and_filters():
    source = (
        'if campaign.mode != "batch":\n    pass\n'
        'ok = mode in ("rq", "celery")\n'
        'Delivery.objects.filter(campaign__mode="rq")\n'
        'default = "batch"\n'
    )
    assert mode_name_branches(source) == [(1, "batch"), (3, "rq"), (3, "celery"), (4, "rq")]


def test_no_module_outside_the_modes_branches_on_a_mode_name():
    """What differs between the modes is asked of ``modes.get(name)``; a branch on a name elsewhere
    is a mode's behaviour that a new mode (or a changed one) would silently miss."""
    branches = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("modes", "tests", "migrations"):
            continue
        found = [(line, name) for line, name in mode_name_branches(path.read_text(encoding="utf-8"))
                 if name != OWN_MODE.get(str(relative))]
        if found:
            branches[str(relative)] = found
    assert branches == {}


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "sends_itself"), [("batch", True), ("rq", False), ("celery", False)])
def test_only_the_mode_that_sends_in_the_callers_process_advises_and_explains_leftovers(name, sends_itself):
    """batch advises the queue modes above the guide's 50 recipients, and says that its sender
    sends what a waited-for run left pending; a queue mode has its queue do both."""
    mode = modes.get(name)
    small = create_campaign("Hi", "Body", [f"s{i:03d}@school.test" for i in range(50)])
    big = create_campaign("Hi", "Body", [f"s{i:03d}@school.test" for i in range(51)])

    assert mode.advice(small) is None
    assert (mode.advice(big) is not None) is sends_itself
    assert (mode.leftover_line(big, 2, "daily quota of 49 reached") is not None) is sends_itself


@pytest.mark.parametrize(
    ("command", "name", "needed"),
    [
        ("setup_periodic_tasks", "batch", "celery"),
        ("setup_periodic_tasks", "rq", "celery"),
        ("rq_maintenance", "batch", "rq"),
        ("rq_maintenance", "celery", "rq"),
    ],
)
def test_a_command_of_one_modes_machinery_is_refused_in_the_others(settings, command, name, needed):
    """setup_periodic_tasks needs django-celery-beat, rq_maintenance RQ's registries: in another
    mode neither exists, and the deployment never runs them there."""
    settings.BULK_EMAIL_QUEUE_MODE = name

    with pytest.raises(CommandError, match=f"{command} .*BULK_EMAIL_QUEUE_MODE={needed}.* {name}"):
        call_command(command)
