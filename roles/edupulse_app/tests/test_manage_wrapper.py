"""edupulse-manage (templates/edupulse-manage.j2) reads send_campaign's files as the caller.

The wrapper runs the command through systemd-run as the app user in the code directory, so a
relative path or a file only root can read (e.g. in /root) would fail there. These tests render
the wrapper as Ansible does, with `nobody` as the app user, and put a stand-in systemd-run
first on PATH that reports what the command would get: its arguments and, for each file
option, the file's owner, mode, its directory's mode and its content (read while the wrapper
waits, as the real command would). Run as root, as the wrapper must be.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

APP_USER = "nobody"
APP_GROUP = grp.getgrgid(pwd.getpwnam(APP_USER).pw_gid).gr_name
FILE_OPTIONS = ("--body-file", "--html-file", "--recipients-file")

FAKE_SYSTEMD_RUN = r"""#!/usr/bin/env python3
import json, os, pwd, stat, sys
args = sys.argv[1:]
command = args[args.index("--") + 1:]
files = {}
for i, arg in enumerate(command):
    for option in ("--body-file", "--html-file", "--recipients-file"):
        path = None
        if arg == option and i + 1 < len(command):
            path = command[i + 1]
        elif arg.startswith(option + "="):
            path = arg.split("=", 1)[1]
        if path and path != "-" and os.path.exists(path):
            st, dst = os.stat(path), os.stat(os.path.dirname(os.path.abspath(path)))
            files[option] = {"path": path, "owner": pwd.getpwuid(st.st_uid).pw_name,
                             "mode": stat.S_IMODE(st.st_mode), "dir_mode": stat.S_IMODE(dst.st_mode),
                             "dir_owner": pwd.getpwuid(dst.st_uid).pw_name, "content": open(path).read()}
print(json.dumps({"systemd_run": args[:args.index("--")], "python": command[0], "command": command[1:], "files": files}))
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory, render_templates) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the wrapper refuses to run as anyone but root: run the tests as root")
    out = tmp_path_factory.mktemp("wrapper")
    render_templates(out, [{"name": "edupulse-manage", "template": "edupulse-manage.j2",
                            "vars": {"edupulse_app_user": APP_USER, "edupulse_app_group": APP_GROUP}}])
    path = out / "edupulse-manage"
    path.chmod(0o755)
    bin_dir = out / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemd-run").write_text(FAKE_SYSTEMD_RUN)
    (bin_dir / "systemd-run").chmod(0o755)
    return path


@pytest.fixture
def home(tmp_path) -> Path:
    """A directory like /root: only root may enter it, and its files are 0600."""
    home = tmp_path / "root-home"
    home.mkdir(mode=0o700)
    for name, text in {"body.txt": "Dear student\n", "body.html": "<p>Dear</p>\n",
                       "students.txt": "a@edupulse.test\nb@edupulse.test\n"}.items():
        (home / name).write_text(text)
        (home / name).chmod(0o600)
    return home


def run(wrapper: Path, cwd: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{wrapper.parent / 'bin'}:{os.environ['PATH']}", "FAKE_RC": str(rc)}
    return subprocess.run([str(wrapper), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def staged_dirs() -> set[str]:
    return {name for name in os.listdir("/tmp") if name.startswith("edupulse-manage.")}


def test_relative_paths_to_root_only_files_reach_the_command_as_private_copies(wrapper, home):
    before = staged_dirs()
    done = run(wrapper, home, "send_campaign", "--subject", "S", "--body-file", "body.txt",
               "--html-file=body.html", "--recipients-file", "./students.txt", "--json")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    files = seen["files"]
    assert set(files) == set(FILE_OPTIONS)
    for option, name in zip(FILE_OPTIONS, ("body.txt", "body.html", "students.txt")):
        copy = files[option]
        assert copy["content"] == (home / name).read_text()
        assert (copy["owner"], copy["mode"]) == (APP_USER, 0o600)
        assert (copy["dir_owner"], copy["dir_mode"]) == (APP_USER, 0o700)
        assert not copy["path"].startswith(str(home))
    # The other arguments are untouched and in order; --html-file keeps its --opt=PATH form.
    command = seen["command"]
    assert command[:5] == ["manage.py", "send_campaign", "--subject", "S", "--body-file"]
    assert command[6].startswith("--html-file=/") and command[-1] == "--json"
    assert f"--uid={APP_USER}" in seen["systemd_run"]
    # The private directory is gone once the command has ended.
    assert staged_dirs() == before
    assert not os.path.exists(os.path.dirname(files["--body-file"]["path"]))


def test_absolute_paths_and_stdin_dash(wrapper, home, tmp_path):
    done = run(wrapper, tmp_path, "send_campaign", "--body-file", "-",
               f"--recipients-file={home / 'students.txt'}", "--html-file=-")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["command"][2:4] == ["--body-file", "-"] and seen["command"][-1] == "--html-file=-"
    assert seen["files"]["--recipients-file"]["content"] == (home / "students.txt").read_text()


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_missing_file_fails_in_the_wrapper_with_one_line(wrapper, home, form):
    before = staged_dirs()
    args = ["--recipients-file", "nope.txt"] if form == "separate" else ["--recipients-file=nope.txt"]
    done = run(wrapper, home, "send_campaign", "--body-file", "body.txt", *args)
    assert done.returncode == 2
    assert done.stdout == ""  # systemd-run was never called
    assert done.stderr.count("\n") == 1
    assert "--recipients-file nope.txt: no such file" in done.stderr and str(home / "nope.txt") in done.stderr
    assert staged_dirs() == before


def test_a_directory_is_refused(wrapper, home):
    done = run(wrapper, home.parent, "send_campaign", "--body-file", home.name)
    assert done.returncode == 2 and "is a directory" in done.stderr and done.stdout == ""


def test_other_commands_pass_their_arguments_unchanged(wrapper, home):
    done = run(wrapper, home, "campaign_status", "--body-file", "body.txt")
    assert json.loads(done.stdout)["command"] == ["manage.py", "campaign_status", "--body-file", "body.txt"]


def test_the_commands_exit_status_is_the_wrappers(wrapper, home):
    before = staged_dirs()
    done = run(wrapper, home, "send_campaign", "--body-file", "body.txt", rc=3)
    assert done.returncode == 3
    assert staged_dirs() == before
