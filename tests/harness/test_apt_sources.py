"""tests/harness/apt_sources.py: which mirror prepare-docker.sh builds the images from.

Each test writes a fake /etc/apt under tmp_path (hosts under the reserved .invalid domain) and
checks the URI the controller's configuration names, in apt's order, or none.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("apt_sources.py")
SPEC = importlib.util.spec_from_file_location("apt_sources", SCRIPT)
apt_sources = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(apt_sources)


def etc(root: Path, sources_list: str = "", **parts: str) -> Path:
    """root/etc/apt with this sources.list and sources.list.d/<name> files (name_list -> name.list)."""
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    if sources_list:
        (root / "etc/apt/sources.list").write_text(sources_list)
    for name, text in parts.items():
        stem, _, suffix = name.rpartition("_")
        (root / "etc/apt/sources.list.d" / f"{stem}.{suffix}").write_text(text)
    return root


DEB822 = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror-a.invalid/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security-a.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def test_deb822_sources_give_the_archive_and_the_security_uri(tmp_path):
    root = etc(tmp_path, debian_sources=DEB822)
    assert apt_sources.first_uri(root, "main") == "http://mirror-a.invalid/debian"
    assert apt_sources.first_uri(root, "security") == "http://security-a.invalid/debian-security"


def test_one_line_sources_list_with_options_and_comments(tmp_path):
    root = etc(tmp_path, sources_list=(
        "# deb http://commented.invalid/debian trixie main\n"
        "deb-src http://source.invalid/debian trixie main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror-b.invalid/debian trixie main\n"
        "deb http://mirror-b.invalid/debian-security trixie-security main\n"
    ))
    assert apt_sources.first_uri(root, "main") == "http://mirror-b.invalid/debian"
    assert apt_sources.first_uri(root, "security") == "http://mirror-b.invalid/debian-security"


def test_sources_list_comes_before_the_directory_and_the_directory_is_read_sorted(tmp_path):
    root = etc(
        tmp_path,
        sources_list="deb http://first.invalid/debian bookworm main\n",
        a_list="deb http://second.invalid/debian bookworm main\n",
    )
    assert apt_sources.first_uri(root, "main") == "http://first.invalid/debian"
    other = etc(tmp_path / "other", b_sources=DEB822, a_list="deb http://a.invalid/debian sid main\n")
    assert apt_sources.first_uri(other, "main") == "http://a.invalid/debian"


def test_other_repositories_and_disabled_entries_are_not_debian(tmp_path):
    root = etc(
        tmp_path,
        sources_list="deb http://ubuntu.invalid/ubuntu noble main\ndeb http://ubuntu.invalid/ubuntu noble-security main\n",
        nodesource_sources="Types: deb\nURIs: https://node.invalid/node_20.x\nSuites: nodistro\nComponents: main\n",
        off_sources="Types: deb\nURIs: http://off.invalid/debian\nSuites: trixie trixie-security\nEnabled: no\n",
        thirdparty_list="deb https://vendor.invalid/apt cloud-sdk-bookworm main\n",
        # Not a file apt reads (neither .list nor .sources).
        old_disabled="deb http://disabled.invalid/debian bookworm main\n",
    )
    assert apt_sources.first_uri(root, "main") == ""
    assert apt_sources.first_uri(root, "security") == ""


def test_no_apt_configuration_at_all_names_no_mirror(tmp_path):
    assert apt_sources.first_uri(tmp_path, "main") == ""
    assert apt_sources.first_uri(tmp_path, "security") == ""


def test_old_style_security_suite(tmp_path):
    root = etc(tmp_path, sources_list="deb http://sec.invalid/debian-security buster/updates main\n")
    assert apt_sources.first_uri(root, "security") == "http://sec.invalid/debian-security"
    assert apt_sources.first_uri(root, "main") == ""


@pytest.mark.parametrize(("kind", "expected"), [("main", "http://mirror-a.invalid/debian\n"), ("security",
                         "http://security-a.invalid/debian-security\n")])
def test_command_line_prints_the_uri(tmp_path, kind, expected):
    root = etc(tmp_path, debian_sources=DEB822)
    out = subprocess.run([sys.executable, str(SCRIPT), kind, "--root", str(root)],
                         capture_output=True, text=True, check=True)
    assert out.stdout == expected


def test_command_line_prints_nothing_without_a_debian_entry(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "main", "--root", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert out.stdout == ""
