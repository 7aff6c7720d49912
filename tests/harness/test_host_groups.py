"""molecule/host_groups.py: under `-n 2`, each host's tests run on one worker, in file order.

The suite runs in a subprocess with molecule/pytest.ini as Molecule runs it: the hosts come
from an Ansible inventory (two Docker containers that do not exist: the tests only record where
and in which order they ran, never connect), and one module names its host itself, as
`docker://...` (testinfra_hosts), as the browser test does (the first host, which xdist would otherwise give the other worker).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

MOLECULE = Path(__file__).resolve().parents[2] / "molecule"

SUITE = {
    "test_first.py": """
import os
import time


def record(host, name):
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{host.backend.get_pytest_id()} {os.environ.get('PYTEST_XDIST_WORKER')} {name}\\n")
    time.sleep(0.2)


def test_a(host):
    record(host, "a")


def test_b(host):
    record(host, "b")


def test_c(host):
    record(host, "c")
""",
    "test_second.py": """
from test_first import record


def test_d(host):
    record(host, "d")
""",
    "test_third.py": """
from test_first import record

testinfra_hosts = ["docker://web-debian12"]


def test_e(host):
    record(host, "e")
""",
}
INVENTORY = """\
all:
  hosts:
    web-debian12: {ansible_connection: community.docker.docker}
    web-debian12-b: {ansible_connection: community.docker.docker}
"""
HOSTS = {"web-debian12": ["a", "b", "c", "d", "e"], "web-debian12-b": ["a", "b", "c", "d"]}


def run_suite(tmp_path: Path, *args: str) -> dict[str, list[tuple[str, str]]]:
    """{host: [(worker, test), ...] in the order they ran}."""
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    log = tmp_path / "run.log"
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(MOLECULE / "pytest.ini"), "--rootdir", str(tmp_path),
         "--connection=ansible", f"--ansible-inventory={tmp_path / 'inventory.yml'}", *args, *SUITE],
        cwd=tmp_path, env={**os.environ, "RUN_LOG": str(log), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    runs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        host, worker, test = line.split()
        runs[host].append((worker, test))
    return runs


def test_each_host_runs_on_a_worker_of_its_own_in_file_order(tmp_path):
    runs = run_suite(tmp_path, "-n", "2")
    assert {host.partition("://")[2] for host in runs} == set(HOSTS), runs
    workers = set()
    for name, expected in HOSTS.items():
        tests = runs[f"ansible://{name}"] + runs[f"docker://{name}"]
        assert [test for _, test in tests] == expected, (name, tests)
        assert len({worker for worker, _ in tests}) == 1, (name, tests)
        workers.add(tests[0][0])
    # Side by side: one host per worker (one of the names extends the other's).
    assert len(workers) == 2, runs


def test_without_xdist_nothing_changes(tmp_path):
    runs = run_suite(tmp_path)
    for name, expected in HOSTS.items():
        tests = runs[f"ansible://{name}"] + runs[f"docker://{name}"]
        assert [test for _, test in tests] == expected, (name, tests)
        assert {worker for worker, _ in tests} == {"None"}, (name, tests)
