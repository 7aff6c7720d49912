#!/usr/bin/env python3
"""Install the bulk_email queue code into an existing Django project, or remove it.

    python3 apply.py --project DIR [--package edupulse] [--mode batch|rq|celery]
                     [--patch FILE ...] [--check] [--remove] [--json]

This is the one mechanism that changes a project: the Ansible role runs it on
servers, the macOS playbook on a working copy, and the test suite on a copy
of example_app. It therefore uses the standard library only (it runs with the
target's system python3) and is idempotent: a second run changes no byte and
reports changed=false.

What it does:
* syncs the app package next to this script (bulk_email/, without tests/,
  __pycache__ and *.pyc) into DIR/bulk_email/, writing only files that
  differ and deleting files the package no longer has;
* appends a marked block to DIR/<package>/settings.py and one to
  DIR/<package>/urls.py (replaced in place when its text changes);
* celery mode: writes DIR/<package>/celery.py (the guide's Celery app,
  marked as managed) and appends the guide's import block to
  DIR/<package>/__init__.py. Another --mode removes both again, so a
  project never imports a queue library it does not run.

* ``--patch FILE`` (repeatable): a unified diff of the project's own code
  (-p1, relative to DIR; e.g. patches/example_app/bulk-email-view.patch,
  which makes the example app's staff page call bulk_email.api), applied
  with the system ``patch`` program without fuzz. A patch already applied
  (its reverse applies) is skipped; one that neither applies nor is applied
  is an error naming the file, before anything changes. Each applied patch
  is copied into DIR/.edupulse-patches/ (numbered, in order); a recorded
  patch no longer given is reversed (newest first), like another --mode
  removes the blocks it does not need.

--remove deletes the package and the blocks and reverses the recorded
patches (newest first), giving back the original files byte for byte. --check reports what would change and writes nothing. --json
prints {"changed": bool, "files": [...]} as the last line of stdout.

Per-mode edits live in ``edits_for`` (blocks) and ``files_for`` (whole
files this script owns); what each mode needs (its apps, URLs, Celery app)
is the app's own table, bulk_email/modes/table.py, read here by its path.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "bulk_email"
APP_SOURCE = Path(__file__).resolve().parent / APP_NAME
MODE_TABLE = APP_SOURCE / "modes" / "table.py"


def load_mode_table() -> types.ModuleType:
    """The app's table of what each queue mode needs of the project.

    Loaded from its file rather than imported: importing the package would
    import Django, which the target's system python3 does not have. No
    bytecode is written, so the copied app_patches stays as rsync left it.
    """
    spec = importlib.util.spec_from_file_location("_bulk_email_mode_table", MODE_TABLE)
    if not MODE_TABLE.is_file() or spec is None or spec.loader is None:
        raise SystemExit(f"apply.py: error: the app's mode table is missing: {MODE_TABLE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


_TABLE = load_mode_table()
NEEDS = _TABLE.NEEDS
MODES = _TABLE.NAMES
BEGIN = "# >>> edupulse-queue (managed by app_patches/apply.py; remove with --remove) >>>"
END = "# <<< edupulse-queue <<<"
# Written into the copied package so that --remove (and a re-run) only ever
# deletes a directory this script created, never a project's own bulk_email/.
OWNER_FILE = ".managed-by-edupulse-apply"
OWNER_TEXT = "Copied by app_patches/apply.py; do not edit, changes are overwritten.\n"
EXCLUDED_DIRS = {"tests", "__pycache__"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


class ApplyError(Exception):
    """A problem the operator must fix; reported without a traceback."""


PATCH_STATE_DIR = ".edupulse-patches"
# No fuzz: a patch that applies exactly reverses exactly, which is what gives --remove its bytes back.
PATCH_OPTIONS = ["-p1", "--batch", "--silent", "--fuzz=0", "--no-backup-if-mismatch", "--reject-file=-"]


def patched_paths(data: bytes) -> list[str]:
    """The project files a unified diff changes (its +++ lines, -p1), for the report."""
    paths = []
    for line in data.decode("utf-8", "replace").splitlines():
        match = re.match(r"\+\+\+ (\S+)", line)
        if match and match.group(1) != "/dev/null":
            paths.append(match.group(1).split("/", 1)[-1])
    return paths


def run_patch(project: Path, patch: bytes, *options: str) -> subprocess.CompletedProcess:
    """Run the system patch program on the project with the diff on stdin."""
    binary = shutil.which("patch")
    if binary is None:
        raise ApplyError("the patch program is not installed (apt-get install patch); --patch needs it")
    return subprocess.run(
        [binary, *PATCH_OPTIONS, *options, "-d", str(project)],
        input=patch, capture_output=True, check=False,
    )


def patch_state(project: Path, patch: bytes, name: str) -> str:
    """"applies", "applied" (its reverse applies) or an ApplyError naming the patch."""
    if run_patch(project, patch, "--dry-run", "--forward").returncode == 0:
        return "applies"
    if run_patch(project, patch, "--dry-run", "--reverse").returncode == 0:
        return "applied"
    detail = run_patch(project, patch, "--dry-run", "--forward")
    output = (detail.stdout + detail.stderr).decode("utf-8", "replace").strip().splitlines()
    raise ApplyError(
        f"patch {name} neither applies to {project} nor is already applied"
        + (f" ({output[-1]})" if output else "")
    )


@dataclass(frozen=True)
class Block:
    """A marked block of text kept at the end of one project file."""

    path: str  # relative to the project directory
    body: str  # the lines between the markers, each ending in a newline

    def text(self) -> str:
        return f"{BEGIN}\n{self.body}{END}\n"


def settings_block(package: str, mode: str) -> Block:
    """Load the app's settings and add its apps to INSTALLED_APPS (skipping ones already there)."""
    return Block(
        f"{package}/settings.py",
        f"from {APP_NAME}.settings import *  # noqa: E402,F401,F403\n"
        "\n"
        "INSTALLED_APPS = [\n"
        "    *INSTALLED_APPS,  # noqa: F405\n"
        "    *(app for app in BULK_EMAIL_INSTALLED_APPS if app not in INSTALLED_APPS),  # noqa: F405\n"
        "]\n",
    )


def urls_block(package: str, mode: str) -> Block:
    """Mount the app's URLs at the site root (they all start with bulk-email/), and the
    mode's own (rq: django-rq's dashboard at django-rq/, whose views let staff users only in).

    The mode's lines are part of the block, not of the app's urls.py, so that a batch project
    never imports django_rq; switching --mode rewrites the block in place.
    """
    patterns = [f'_bulk_email_path("", _bulk_email_include("{APP_NAME}.urls"))']
    patterns += [f'_bulk_email_path("{prefix}", _bulk_email_include("{urlconf}"))'
                 for prefix, urlconf in NEEDS[mode].urls]
    return Block(
        f"{package}/urls.py",
        "from django.urls import include as _bulk_email_include  # noqa: E402\n"
        "from django.urls import path as _bulk_email_path  # noqa: E402\n"
        "\n"
        f"urlpatterns = [*urlpatterns, {', '.join(patterns)}]\n",
    )


def celery_init_block(package: str) -> Block:
    """The guide's import in <package>/__init__.py: the Celery app loads with Django, so
    shared_task binds to it in the web process too (which enqueues the tasks)."""
    return Block(
        f"{package}/__init__.py",
        "from .celery import app as celery_app  # noqa: E402\n"
        "\n"
        '__all__ = ("celery_app",)\n',
    )


def edits_for(package: str, mode: str) -> list[Block]:
    """The blocks a mode needs (its URLs in the urls block; a Celery app: one more in __init__.py)."""
    blocks = [settings_block(package, mode), urls_block(package, mode)]
    if NEEDS[mode].celery_app:
        blocks.append(celery_init_block(package))
    return blocks


def all_block_paths(package: str) -> list[str]:
    """Every file any mode edits, so --remove and a mode switch clean up what was applied."""
    return sorted({block.path for mode in MODES for block in edits_for(package, mode)})


CELERY_APP = '''{marker}
"""The project's Celery app, as in the guide (celery mode of bulk_email).

Configured from Django's settings, names starting with CELERY_ (set by
bulk_email.settings from the environment); tasks are found in every
installed app's tasks.py.
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{package}.settings")

app = Celery("{package}")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
'''
MANAGED_FILE_MARKER = "# Managed by app_patches/apply.py (celery mode): do not edit; removed by --remove."


def files_for(package: str, mode: str) -> dict[str, str]:
    """Whole files a mode needs, relative path -> text; each starts with MANAGED_FILE_MARKER."""
    if NEEDS[mode].celery_app:
        return {f"{package}/celery.py": CELERY_APP.format(marker=MANAGED_FILE_MARKER, package=package)}
    return {}


def all_file_paths(package: str) -> list[str]:
    """Every whole file any mode writes."""
    return sorted({path for mode in MODES for path in files_for(package, mode)})


def find_block(content: str, path: str) -> tuple[int, int] | None:
    """Return the (start, end) span of the managed block including its leading separator.

    apply always writes "\\n" + block after the original text, so removing
    that exact span gives the original bytes back whether or not the file
    ended with a newline.
    """
    start = content.find("\n" + BEGIN + "\n")
    if start == -1:
        if content.startswith(BEGIN + "\n"):
            raise ApplyError(f"{path}: managed block at the very start of the file; remove it by hand")
        return None
    end = content.find("\n" + END + "\n", start)
    if end == -1:
        raise ApplyError(f"{path}: found '{BEGIN}' without its end marker; fix the file by hand")
    return start, end + len(END) + 2


def with_block(content: str, block: Block) -> str:
    """Return content with the block present and current (appended, or replaced in place)."""
    span = find_block(content, block.path)
    if span is None:
        return content + "\n" + block.text()
    start, end = span
    return content[:start] + "\n" + block.text() + content[end:]


def without_block(content: str, path: str) -> str:
    """Return content with the managed block (and its separator) cut out."""
    span = find_block(content, path)
    if span is None:
        return content
    start, end = span
    return content[:start] + content[end:]


def source_files() -> dict[str, bytes]:
    """The app package as it should appear in the project: relative path -> bytes."""
    if not (APP_SOURCE / "__init__.py").is_file():
        raise ApplyError(f"app package not found next to apply.py: {APP_SOURCE}")
    files = {OWNER_FILE: OWNER_TEXT.encode()}
    for path in sorted(APP_SOURCE.rglob("*")):
        relative = path.relative_to(APP_SOURCE)
        excluded = set(relative.parts[:-1]) & EXCLUDED_DIRS or path.name.endswith(EXCLUDED_SUFFIXES)
        if path.is_dir() or excluded:
            continue
        files[relative.as_posix()] = path.read_bytes()
    return files


def installed_files(target: Path) -> Iterator[str]:
    """Files currently in the project's copy, skipping bytecode Python writes at run time."""
    for path in sorted(target.rglob("*")):
        relative = path.relative_to(target)
        if path.is_file() and "__pycache__" not in relative.parts:
            yield relative.as_posix()


def check_ownership(target: Path) -> None:
    """Refuse to touch a bulk_email/ directory that this script did not create."""
    if target.exists() and any(target.iterdir()) and not (target / OWNER_FILE).is_file():
        raise ApplyError(
            f"{target} exists and was not created by apply.py ({OWNER_FILE} missing); "
            "refusing to overwrite it"
        )


def read_text(path: Path) -> str:
    """Decode without newline translation, so CRLF files come back byte for byte."""
    return path.read_bytes().decode("utf-8")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace a file in one step, keeping its mode, so a crash never leaves half a settings.py."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Patcher:
    """Computes and (unless check is set) performs the changes, collecting changed paths."""

    def __init__(self, project: Path, package: str, mode: str, check: bool,
                 patches: list[Path] | None = None) -> None:
        self.project = project
        self.package = package
        self.mode = mode
        self.check = check
        self.patches = patches or []
        self.changed: list[str] = []

    # --- --patch: the project's own files, changed by unified diffs --------------------------

    def recorded_patches(self) -> list[Path]:
        """The copies of the patches this script applied, oldest first."""
        state = self.project / PATCH_STATE_DIR
        return sorted(state.glob("[0-9][0-9][0-9]-*.patch")) if state.is_dir() else []

    @staticmethod
    def recorded_name(path: Path) -> str:
        return path.name.split("-", 1)[1]

    def wanted_patches(self) -> list[tuple[str, bytes]]:
        """(name, bytes) of each --patch, checked readable and unique by file name."""
        wanted: list[tuple[str, bytes]] = []
        for path in self.patches:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ApplyError(f"cannot read patch {path}: {exc.strerror}") from None
            if path.name in {name for name, _ in wanted}:
                raise ApplyError(f"two patches named {path.name}; give each a file name of its own")
            wanted.append((path.name, data))
        return wanted

    def plan_patches(self) -> tuple[list[Path], list[tuple[str, bytes]]]:
        """What to reverse (recorded, no longer wanted or changed; newest first) and to apply.

        Checked before any file changes: a patch that neither applies nor is
        applied stops the whole run with its name.
        """
        wanted = self.wanted_patches()
        recorded = {self.recorded_name(path): path for path in self.recorded_patches()}
        reverse = [
            path for name, path in recorded.items()
            if name not in dict(wanted) or path.read_bytes() != dict(wanted)[name]
        ]
        reverse.reverse()
        apply: list[tuple[str, bytes]] = []
        for name, data in wanted:
            if name in recorded and recorded[name] not in reverse:
                if patch_state(self.project, data, name) != "applied":
                    raise ApplyError(f"patch {name} is recorded as applied but the files no longer match it")
                continue
            if not reverse and patch_state(self.project, data, name) == "applied":
                continue  # applied by hand or by an earlier copy: leave it, record nothing
            apply.append((name, data))
        return reverse, apply

    def reverse_patch(self, record: Path) -> None:
        data = record.read_bytes()
        state = patch_state(self.project, data, self.recorded_name(record))
        self.changed.append(f"{PATCH_STATE_DIR}/{record.name}")
        if state == "applied":
            self.changed.extend(patched_paths(data))
        if self.check:
            return
        if state == "applied":
            result = run_patch(self.project, data, "--reverse")
            if result.returncode != 0:
                raise ApplyError(f"reversing patch {self.recorded_name(record)} failed: "
                                 f"{result.stdout.decode('utf-8', 'replace').strip()}")
        record.unlink()

    def apply_patch(self, name: str, data: bytes) -> None:
        numbers = [int(path.name[:3]) for path in self.recorded_patches()]
        record = self.project / PATCH_STATE_DIR / f"{max(numbers, default=0) + 1:03d}-{name}"
        self.changed.extend([*patched_paths(data), f"{PATCH_STATE_DIR}/{record.name}"])
        if self.check:
            return
        write_atomically(record, data)  # recorded first: a crash after patching can still be undone
        result = run_patch(self.project, data, "--forward")
        if result.returncode != 0:
            record.unlink()
            raise ApplyError(f"patch {name} failed: {result.stdout.decode('utf-8', 'replace').strip()}")

    def sync_patches(self, reverse: list[Path], apply: list[tuple[str, bytes]]) -> None:
        for record in reverse:
            self.reverse_patch(record)
        if reverse and not self.check:
            # A changed patch can only be checked once its old version is reversed.
            apply = [(name, data) for name, data in apply
                     if patch_state(self.project, data, name) == "applies"]
        for name, data in apply:
            self.apply_patch(name, data)
        state = self.project / PATCH_STATE_DIR
        if not self.check and state.is_dir() and not any(state.iterdir()):
            state.rmdir()

    def project_file(self, relative: str) -> Path:
        path = self.project / relative
        if not path.is_file():
            raise ApplyError(f"{path} not found: is --project/--package right?")
        return path

    def set_text(self, relative: str, new: str) -> None:
        path = self.project / relative
        if not path.is_file() or path.read_bytes() != new.encode():
            self.changed.append(relative)
            if not self.check:
                write_atomically(path, new.encode())

    def apply(self) -> None:
        blocks = edits_for(self.package, self.mode)
        files = files_for(self.package, self.mode)
        paths = {block.path: self.project_file(block.path) for block in blocks}
        for relative in files:
            self.check_managed_file(relative)
        check_ownership(self.project / APP_NAME)
        reverse, patches = self.plan_patches()
        self.sync_patches(reverse, patches)
        self.sync_app()
        for relative, text in files.items():
            self.set_text(relative, text)
        for block in blocks:
            self.set_text(block.path, with_block(read_text(paths[block.path]), block))
        wanted = {block.path for block in blocks}
        self.remove_blocks([path for path in all_block_paths(self.package) if path not in wanted])
        self.remove_files([path for path in all_file_paths(self.package) if path not in files])

    def remove(self) -> None:
        target = self.project / APP_NAME
        check_ownership(target)
        self.sync_patches(list(reversed(self.recorded_patches())), [])
        self.remove_blocks(all_block_paths(self.package))
        self.remove_files(all_file_paths(self.package))
        if target.exists():
            self.changed.extend(f"{APP_NAME}/{name}" for name in installed_files(target))
            if not self.check:
                shutil.rmtree(target)

    def remove_blocks(self, relatives: list[str]) -> None:
        """Cut the managed block out of each file that has one."""
        for relative in relatives:
            path = self.project / relative
            if path.is_file():
                self.set_text(relative, without_block(read_text(path), relative))

    def is_managed_file(self, relative: str) -> bool:
        """True when the file exists and was written by this script (starts with the marker)."""
        path = self.project / relative
        return path.is_file() and read_text(path).startswith(MANAGED_FILE_MARKER + "\n")

    def check_managed_file(self, relative: str) -> None:
        """Refuse to overwrite a file (e.g. the project's own celery.py) we did not write."""
        path = self.project / relative
        if path.exists() and not self.is_managed_file(relative):
            raise ApplyError(
                f"{path} exists and was not written by apply.py; refusing to touch it "
                "(move its settings into the project's settings and delete it, or rename it)"
            )

    def remove_files(self, relatives: list[str]) -> None:
        """Delete the managed files present (another mode, or --remove); a project's own
        file of the same name is left alone."""
        for relative in relatives:
            if self.is_managed_file(relative):
                self.changed.append(relative)
                if not self.check:
                    (self.project / relative).unlink()

    def sync_app(self) -> None:
        target = self.project / APP_NAME
        check_ownership(target)
        wanted = source_files()
        for name, data in wanted.items():
            path = target / name
            if not path.is_file() or path.read_bytes() != data:
                self.changed.append(f"{APP_NAME}/{name}")
                if not self.check:
                    write_atomically(path, data)
        if target.exists():
            for name in installed_files(target):
                if name not in wanted:
                    self.changed.append(f"{APP_NAME}/{name}")
                    if not self.check:
                        (target / name).unlink()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", required=True, type=Path, help="Directory holding manage.py.")
    parser.add_argument("--package", default="edupulse", help="The project's settings package.")
    parser.add_argument("--mode", choices=MODES, default="batch", help="Queue mode to install.")
    parser.add_argument(
        "--patch", action="append", default=[], type=Path, metavar="FILE",
        help="A unified diff (-p1, relative to --project) of the project's own code; repeatable.",
    )
    parser.add_argument("--check", action="store_true", help="Report changes, write nothing.")
    parser.add_argument("--remove", action="store_true", help="Undo: remove blocks and the app.")
    parser.add_argument("--json", action="store_true", help="Print a JSON summary as the last line.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.project.is_dir():
        print(f"apply.py: error: project directory {args.project} not found", file=sys.stderr)
        return 2
    patcher = Patcher(args.project.resolve(), args.package, args.mode, args.check, args.patch)
    try:
        if args.remove:
            patcher.remove()
        else:
            patcher.apply()
    except (ApplyError, OSError, UnicodeDecodeError) as exc:
        print(f"apply.py: error: {exc}", file=sys.stderr)
        return 2
    verb = "would change" if args.check else ("removed" if args.remove else "changed")
    for name in patcher.changed:
        print(f"{verb}: {name}")
    if not patcher.changed:
        print("nothing to do")
    if args.json:
        print(json.dumps({"changed": bool(patcher.changed), "files": patcher.changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
