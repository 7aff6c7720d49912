#!/usr/bin/env python3
"""Benchmarks of the three queue modes on deployed containers (`make bench`; not a test).

    .venv/bin/python bench/run.py [--modes batch,rq,celery] [--recipients 1000] [--keep]
                                  [--settings '50/0 s,2 workers'] [--measure-only]
                                  [--converge-only] [--mitogen] [--reruns 3] [--prefix NAME]
                                  [--compare REF [--rounds 3]]

For each mode: a fresh container bench-<mode> from the local systemd image
(the flags of .config/molecule/config.yml), deployed with the project's own
site.yml and bench/inventory/<mode>.yml (the demo's group_vars plus
bench/vars.yml: the SMTP sink requires STARTTLS and the app verifies it).
The first converge from the bare image and the idempotent second run are
timed, one mode at a time (the machine is shared, so the load averages are
recorded with every number). Then, one mode
and one setting at a time, re-deployed with the setting's -e variables:

* the single-connection limit (bench/in_container.py limit), measured at
  the start and at the end of each mode's block;
* a 20-recipient warm-up campaign, then a 1,000-recipient campaign:
  submit latency (the operator's `edupulse-manage send_campaign`), first
  and last acceptance by the sink, rates, peak memory of the senders;
* rq and celery: Redis memory per queued email (workers stopped).

Results: bench/results/<UTC time>.json and .md, and latest.json/latest.md;
ansible logs in .cache/bench/. The containers are removed at the end unless
--keep. --measure-only measures kept containers again as they are deployed
(one --settings name per mode), without creating or converging anything.
No number is asserted: on a shared machine a threshold would only be flaky.

Deploy times: the first converge and the no-change re-run of each mode, one
mode at a time, with their ratio (the re-run should be a fraction of the first).
The re-run is timed --reruns times (3) and its median reported, with min-max: a
first converge happens once per host, and a few seconds of controller CPU vary
more with the machine's other load than minutes of downloads do. With
--mitogen, after the plain runs, fresh containers are converged the same way
with Mitogen's strategy (an opt-in: .venv has mitogen from requirements.txt, and
only --mitogen turns its strategy on; the plain path stays the default). --converge-only stops after the
deploy times (no campaigns). --prefix (or EDUPULSE_BENCH_PREFIX) names the
containers <prefix>-<mode> instead of bench-<mode>, for runs side by side.

Code before and after, same run: --compare REF measures kept containers (as
--measure-only does, one --settings name per mode) with the app package
(app_patches/bulk_email) of the git commit REF and of this checkout's working
tree in turn, REF first, --rounds times: each turn installs that version's
package into the deployed code directory, then runs the limit and a campaign,
so both versions meet the same machine load within minutes of each other.
The deployment itself (site.yml, env file, units, database) stays this
checkout's; a version without a migration of the other's simply leaves that
table alone. A REF from before app_patches/patches is measured with the
project's recorded patches (the staff page's, which imports bulk_email.api)
reversed, as it was deployed then. The mode's timer-started senders are
stopped meanwhile (REF may not have them). Results: bench/results/compare-<UTC time>.json and .md.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
LOGS = REPO / ".cache" / "bench"
IMAGE = os.environ.get("EDUPULSE_BENCH_IMAGE", "edupulse/debian12-systemd:r3")
CACHE = Path(os.environ.get("EDUPULSE_CACHE_DIR", "/var/cache/edupulse"))
IN_CONTAINER = "/root/edupulse-bench"
# Container names <prefix>-<mode> (--prefix); the inventories name the hosts bench-<mode>.
PREFIX = [os.environ.get("EDUPULSE_BENCH_PREFIX", "bench")]
# Mitogen's strategy for --mitogen: the one the Molecule scenarios use (mitogen in .venv).
MITOGEN_STRATEGIES = REPO / "plugins" / "strategy"
PYTHON_RE = r"^\S*python[0-9.]*\s"


@dataclass(frozen=True)
class Setting:
    """One configuration of a mode, deployed with these -e variables."""

    name: str
    variables: dict
    # Measure Redis memory per queued email with this setting (rq and celery).
    redis_memory: bool = False


@dataclass(frozen=True)
class Mode:
    """A queue mode, its settings, and how to find its sending processes."""

    name: str
    settings: list[Setting]
    workers: str  # regex of the senders' command lines (in_container.py --workers)
    stop_units: list[str] = field(default_factory=list)  # stopped for the Redis measurement
    redis_db: int = 0


# rq and celery: batches of 20 (the guide's) with no spacing, so the worker count is what
# varies; the guide's 0.5 s spacing would cap any number of workers at 40 msg/s.
QUEUED = {"edupulse_app_batch_size": 20, "edupulse_app_batch_delay": 0}
MODES = {
    "batch": Mode(
        "batch",
        [
            Setting("guide 20/0.5 s", {"edupulse_app_batch_size": 20, "edupulse_app_batch_delay": 0.5}),
            Setting("tuned 50/0.1 s", {"edupulse_app_batch_size": 50, "edupulse_app_batch_delay": 0.1}),
            Setting("50/0 s", {"edupulse_app_batch_size": 50, "edupulse_app_batch_delay": 0}),
        ],
        workers=PYTHON_RE + r".*manage\.py send_campaign",
    ),
    "rq": Mode(
        "rq",
        [
            Setting(f"{n} worker{'s' if n > 1 else ''}", {**QUEUED, "rqworker_processes": n}, redis_memory=n == 2)
            for n in (1, 2, 4)
        ],
        workers=PYTHON_RE + r".*manage\.py rqworker",
        stop_units=["edupulse-rqworker@*.service", "edupulse-rq-maintenance.timer"],
        redis_db=0,
    ),
    "celery": Mode(
        "celery",
        [
            Setting(f"concurrency {n}", {**QUEUED, "celery_concurrency": n}, redis_memory=n == 2)
            for n in (1, 2, 4)
        ],
        workers=PYTHON_RE + r".*celery.* worker ",
        stop_units=["edupulse-celery.service", "edupulse-celerybeat.service"],
        redis_db=1,
    ),
}


def log(message: str) -> None:
    """Progress on stderr, so a long run shows where it is."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(command: list[str], **options) -> subprocess.CompletedProcess:
    """Run a command, failing loudly with its output."""
    result = subprocess.run(command, capture_output=True, text=True, **options)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)}: rc={result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def loadavg() -> list[float]:
    """The machine's load averages now (uptime's three numbers)."""
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


class LoadRecorder(threading.Thread):
    """Load averages every 10 s for the whole run: the machine is shared with other jobs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[list[float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(loadavg())
            self.stopped.wait(10)

    def summary(self) -> dict:
        """Min, mean and max of the 1-minute load over the run."""
        self.stopped.set()
        ones = [sample[0] for sample in self.samples] or [0.0]
        return {"load1_min": min(ones), "load1_mean": round(sum(ones) / len(ones), 2),
                "load1_max": max(ones), "samples": len(ones)}


def machine() -> dict:
    """What the numbers were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {
        "cpus": os.cpu_count(), "cpu_model": model.group(1) if model else platform.processor(),
        "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None,
        "kernel": platform.release(), "image": IMAGE,
        "docker": run(["docker", "version", "--format", "{{.Server.Version}}"]).stdout.strip(),
    }


# --- Containers ------------------------------------------------------------------------------


def container(mode: str) -> str:
    return f"{PREFIX[0]}-{mode}"


def inventory_host(mode: str) -> str:
    """The host's name in bench/inventory/<mode>.yml (the fact cache and the recap use it)."""
    return f"bench-{mode}"


def create_container(mode: str) -> None:
    """A bare systemd container, as Molecule creates one (.config/molecule/config.yml)."""
    name = container(mode)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    apt_cache = CACHE / f"apt-{name}"  # apt locks its archive: one per container
    for path in (apt_cache, CACHE / "pip"):
        path.mkdir(parents=True, exist_ok=True)
    run([
        "docker", "run", "-d", "--name", name, "--hostname", name,
        "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
        "--security-opt", "apparmor=unconfined", "--cgroupns=host",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "-v", f"{apt_cache}:/var/cache/apt/archives:rw", "-v", f"{CACHE / 'pip'}:/root/.cache/pip:rw",
        IMAGE, "/sbin/init",
    ])
    deadline, state = time.monotonic() + 300, ""
    while state not in ("running", "degraded") and time.monotonic() < deadline:
        # Right after `docker run` systemd's bus may not answer yet: ask again.
        state = subprocess.run(["docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                               capture_output=True, text=True, timeout=300, check=False).stdout.strip()
        if state not in ("running", "degraded"):
            time.sleep(1)
    if state not in ("running", "degraded"):
        raise RuntimeError(f"{name}: systemd is {state!r}")


def in_container(mode: str, *args: str, timeout: float = 1800) -> dict:
    """Run bench/in_container.py in the mode's container and return its JSON line."""
    output = run(["docker", "exec", container(mode), "python3", f"{IN_CONTAINER}/in_container.py", *args],
                 timeout=timeout).stdout
    return json.loads(output.strip().splitlines()[-1])


def copy_driver(mode: str) -> None:
    """Put the measuring script and the message into the container."""
    run(["docker", "exec", container(mode), "mkdir", "-p", IN_CONTAINER])
    for name in ("in_container.py", "message.txt", "message.html"):
        run(["docker", "cp", str(BENCH / name), f"{container(mode)}:{IN_CONTAINER}/{name}"])


def shell(mode: str, script: str) -> str:
    """A shell snippet inside the container (for reading the deployed configuration)."""
    return run(["docker", "exec", container(mode), "sh", "-c", script]).stdout.strip()


# --- Ansible ---------------------------------------------------------------------------------


def playbook_command(mode: str, setting: Setting, mitogen: bool = False) -> list[str]:
    """site.yml as an operator runs it, with the bench inventory and the setting's variables.

    ansible_host: the container's name (<prefix>-<mode>). With Mitogen the connection is named
    `docker` (Mitogen replaces only the short connection names, not community.docker.docker).
    """
    return [
        str(REPO / ".venv/bin/ansible-playbook"), "site.yml", "-i", f"bench/inventory/{mode}.yml",
        "-e", f"queue_mode={mode}", "-e", "@bench/vars.yml", "-e", json.dumps(setting.variables),
        "-e", f"ansible_host={container(mode)}",
        *(["-e", "ansible_connection=docker"] if mitogen else []),
    ]


def mitogen_available() -> None:
    """Refuse --mitogen at once when .venv lacks mitogen (requirements.txt pins it)."""
    probe = subprocess.run([str(REPO / ".venv/bin/python"), "-c", "import ansible_mitogen"],
                           capture_output=True, text=True, check=False)
    if probe.returncode:
        raise SystemExit(f"--mitogen: mitogen is not installed in .venv (make setup): {probe.stderr.strip()[-200:]}")


def ansible_env(mitogen: bool = False) -> dict:
    """The Makefile's environment, with a fact cache of the bench's own (cleared per fresh host).

    Pipelining comes from ansible.cfg ([defaults], which the Docker connection reads). With
    Mitogen: its linear strategy (ANSIBLE_STRATEGY=mitogen_linear), as the README shows.
    """
    env = dict(os.environ)
    env.update({
        "PATH": f"{REPO / '.venv/bin'}:{env.get('PATH', '')}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(LOGS / "facts"), "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0", "PYTHONDONTWRITEBYTECODE": "1",
    })
    if mitogen:
        env.update({"ANSIBLE_STRATEGY_PLUGINS": str(MITOGEN_STRATEGIES), "ANSIBLE_STRATEGY": "mitogen_linear"})
    return env


def recap(log_text: str, host: str) -> dict:
    """ok/changed/failed counts of the PLAY RECAP line of ``host``."""
    match = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", log_text, re.MULTILINE)
    if not match:
        return {}
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def start_playbook(mode: str, setting: Setting, label: str,
                   mitogen: bool = False) -> tuple[subprocess.Popen, float, Path]:
    """Start site.yml in the background; return the process, its start and its log file."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_file = LOGS / f"{mode}-{label}.log"
    handle = log_file.open("w")
    process = subprocess.Popen(playbook_command(mode, setting, mitogen), cwd=REPO, env=ansible_env(mitogen),
                               stdout=handle, stderr=subprocess.STDOUT)
    return process, time.monotonic(), log_file


def finish_playbook(mode: str, started: tuple[subprocess.Popen, float, Path]) -> dict:
    """Wait for a playbook run; its wall time, recap, load and log (and "failed" if it did)."""
    process, start, log_file = started
    returncode = process.wait()
    seconds = time.monotonic() - start
    result = {"seconds": round(seconds, 1), "recap": recap(log_file.read_text(), inventory_host(mode)),
              "loadavg": loadavg(), "log": str(log_file.relative_to(REPO))}
    if returncode:
        result["failed"] = f"site.yml for {mode} failed (rc={returncode}); see {log_file}"
        log(result["failed"])
    return result


def converge(modes: list[str], setting_of: dict[str, Setting], label: str,
             mitogen: bool = False) -> dict[str, dict]:
    """Run site.yml for several modes side by side (each its own container and inventory)."""
    started = {mode: start_playbook(mode, setting_of[mode], label, mitogen) for mode in modes}
    return {mode: finish_playbook(mode, started[mode]) for mode in modes}


def fresh_hosts(modes: list[str]) -> None:
    """New bare containers, and no cached facts of the old ones (a fresh host gathers facts)."""
    for mode in modes:
        create_container(mode)
        (LOGS / "facts" / inventory_host(mode)).unlink(missing_ok=True)


def deploy_times(modes: list[str], setting_of: dict[str, Setting], mitogen: bool,
                 reruns: int = 3) -> dict[str, dict]:
    """First converge from the bare image, then ``reruns`` no-change re-runs, one mode at a time.

    One deploy at a time, as a user deploys a server: side by side, three playbooks on two
    cores made every figure CPU-bound, and the no-change re-run (all controller CPU and round
    trips) more so than the first converge (downloads and dpkg), which skewed the ratio.
    A first converge happens once per host; the re-run, a few seconds of controller CPU that the
    machine's other load can double, is timed several times and its median taken ("second", the
    run itself; "reruns", every run's seconds), a failed one taken instead so that it is reported.
    """
    suffix = "-mitogen" if mitogen else ""
    times = {}
    for mode in modes:
        log(f"{mode}: first converge from the bare image{' with Mitogen' if mitogen else ''}")
        first = converge([mode], setting_of, f"converge1{suffix}", mitogen)[mode]
        log(f"{mode}: {reruns} no-change re-runs{' with Mitogen' if mitogen else ''}")
        runs = [converge([mode], setting_of, f"converge{index + 2}{suffix}", mitogen)[mode] for index in range(reruns)]
        failed = [run for run in runs if "failed" in run]
        second = failed[0] if failed else sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]
        times[mode] = {"first": first, "second": second, "reruns": [run["seconds"] for run in runs]}
    return times


# --- Measurements ----------------------------------------------------------------------------


def deployed(mode: str) -> dict:
    """What is really deployed: the env file's batch settings, TLS, workers (keeps us honest)."""
    env = shell(mode, "grep -E '^(BULK_EMAIL_BATCH_SIZE|BULK_EMAIL_BATCH_DELAY|EMAIL_USE_TLS|EMAIL_HOST|"
                      "EMAIL_PORT|BULK_EMAIL_DAILY_QUOTA)=' /etc/edupulse/edupulse.env")
    facts: dict = dict(line.replace('"', "").split("=", 1) for line in env.splitlines())
    facts["sink_starttls"] = "--tls-cert" in shell(mode, "systemctl show -p ExecStart smtp-sink")
    if mode == "rq":
        facts["rq_workers_running"] = int(shell(
            mode, "systemctl list-units 'edupulse-rqworker@*' --state=running --no-legend | wc -l"))
    if mode == "celery":
        exec_start = shell(mode, "systemctl show -p ExecStart edupulse-celery")
        facts["celery_concurrency"] = int(re.search(r"--concurrency=(\d+)", exec_start).group(1))
    return facts


def wait_for_workers(mode: str, setting: Setting) -> None:
    """After a re-deploy, wait until the mode's worker processes are all up."""
    expected = {"rq": setting.variables.get("rqworker_processes", 0),
                "celery": 1 + setting.variables.get("celery_concurrency", 0)}.get(mode, 0)
    deadline = time.monotonic() + 120
    pattern = re.compile(MODES[mode].workers)
    while expected and time.monotonic() < deadline:
        processes = run(["docker", "exec", container(mode), "ps", "-eo", "args="]).stdout.splitlines()
        if sum(1 for line in processes if pattern.search(line)) >= expected:
            break
        time.sleep(1)
    time.sleep(3)  # celery's children announce themselves; rq workers register in Redis


def units_to_start(mode: Mode, setting: Setting) -> list[str]:
    """The stopped units by name (a pattern only matches units systemd still has loaded)."""
    if mode.name == "rq":
        instances = [f"edupulse-rqworker@{n}.service" for n in range(1, setting.variables["rqworker_processes"] + 1)]
        return [*instances, "edupulse-rq-maintenance.timer"]
    return list(mode.stop_units)


def measure_setting(mode: Mode, setting: Setting, recipients: int) -> dict:
    """Warm-up, then the measured campaign (and Redis memory) of one deployed setting."""
    log(f"{mode.name} / {setting.name}: warm-up and {recipients}-recipient campaign")
    in_container(mode.name, "campaign", "--recipients", "20", "--workers", mode.workers)
    # The limit right before the campaign: the machine is shared and its load moves within minutes.
    result = {"setting": setting.name, "variables": setting.variables, "deployed": deployed(mode.name),
              "limit": in_container(mode.name, "limit", "--recipients", str(recipients)),
              "campaign": in_container(mode.name, "campaign", "--recipients", str(recipients),
                                       "--workers", mode.workers)}
    if setting.redis_memory:
        log(f"{mode.name} / {setting.name}: Redis memory per queued email")
        result["redis_memory"] = in_container(
            mode.name, "redis-memory", "--recipients", str(recipients), "--db", str(mode.redis_db),
            "--stop", *mode.stop_units, "--start", *units_to_start(mode, setting))
    return result


def measure_mode(mode: Mode, recipients: int, reconfigure: dict) -> dict:
    """All settings of one mode, each re-deployed and measured with its own limit run."""
    copy_driver(mode.name)
    block: dict = {"startup": in_container(mode.name, "startup"), "settings": []}
    for index, setting in enumerate(mode.settings):
        if index:
            log(f"{mode.name}: re-deploying for {setting.name}")
            redeploy = converge([mode.name], {mode.name: setting}, f"setting{index + 1}")[mode.name]
            reconfigure[f"{mode.name} {setting.name}"] = redeploy
            if "failed" in redeploy:
                raise RuntimeError(redeploy["failed"])
        wait_for_workers(mode.name, setting)
        block["settings"].append(measure_setting(mode, setting, recipients))
    # Last, since its campaigns are then sent by the mode's last setting: what a staff member
    # waits for on the site's own page, POST to redirect, 2,000 recipients (median of 3).
    block["web_submit"] = in_container(mode.name, "web-submit", "--recipients", "2000")
    return block


# --- Before and after, same run (--compare) ---------------------------------------------------

APP_PACKAGE = "app_patches/bulk_email"
CODE_DIR = "/opt/edupulse/app"  # the role's edupulse_app_root/app (bench/vars.yml keeps the default)
# Started by systemd on their own (batch's sender pass); stopped while versions are swapped.
TIMER_UNITS = {"batch": ["edupulse-batch-sender.timer", "edupulse-batch-sender.path"]}


def package_tar(ref: str | None) -> bytes:
    """The app package of git commit ``ref``, or of the working tree (None), as a tar without tests."""
    if ref:
        return subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, APP_PACKAGE],
                              capture_output=True, check=True).stdout
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(REPO / APP_PACKAGE, arcname=APP_PACKAGE,
                filter=lambda info: None if "/tests" in info.name or "__pycache__" in info.name else info)
    return buffer.getvalue()


def has_patch_files(ref: str) -> bool:
    """Whether the checkout at ``ref`` patches the project's own code (app_patches/patches)."""
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{ref}:app_patches/patches"],
                          capture_output=True, check=False).returncode == 0


def set_project_patches(mode: str, applied: bool) -> None:
    """Apply (or reverse, newest first) the project patches apply.py recorded, where not so already."""
    direction = "--forward" if applied else "--reverse"
    order = "sort" if applied else "sort -r"
    script = (
        f"cd {CODE_DIR}; for p in $(ls .edupulse-patches/*.patch 2>/dev/null | {order}); do "
        f"if patch -p1 --batch --silent --fuzz=0 --dry-run {direction} < $p >/dev/null 2>&1; then "
        f"patch -p1 --batch --silent --fuzz=0 --no-backup-if-mismatch {direction} < $p; fi; done"
    )
    run(["docker", "exec", container(mode), "sh", "-c", script])


def install_package(mode: str, tar: bytes, patched: bool = True) -> None:
    """Replace the deployed bulk_email package by the one in ``tar``, keeping apply.py's owner file;
    ``patched``: with the project's recorded patches applied (else reversed)."""
    set_project_patches(mode, patched)
    script = (
        "set -e; work=/tmp/edupulse-bench-version; rm -rf $work; mkdir -p $work; tar -x -C $work; "
        f"find {CODE_DIR}/bulk_email -mindepth 1 -maxdepth 1 ! -name .managed-by-edupulse-apply "
        "-exec rm -rf {} +; "
        f"cd $work/{APP_PACKAGE}; rm -rf tests; cp -a . {CODE_DIR}/bulk_email/; "
        f"chown -R root:root {CODE_DIR}/bulk_email; chmod -R a+rX {CODE_DIR}/bulk_email"
    )
    subprocess.run(["docker", "exec", "-i", container(mode), "sh", "-c", script], input=tar,
                   capture_output=True, check=True, timeout=120)


def measure_versions(mode: Mode, ref: str, rounds: int, recipients: int) -> list[dict]:
    """REF's package and this checkout's in turn, ``rounds`` times: limit, then a campaign, each."""
    versions = {ref[:12]: (package_tar(ref), has_patch_files(ref)), "this checkout": (package_tar(None), True)}
    setting = mode.settings[0]
    timers = TIMER_UNITS.get(mode.name, [])
    copy_driver(mode.name)
    if timers:
        run(["docker", "exec", container(mode.name), "systemctl", "stop", *timers])
    turns = []
    try:
        for number in range(1, rounds + 1):
            for label, (tar, patched) in versions.items():
                log(f"{mode.name} / {setting.name}: round {number}, {label}")
                install_package(mode.name, tar, patched)
                in_container(mode.name, "campaign", "--recipients", "20", "--workers", mode.workers)
                turns.append({
                    "round": number, "version": label, "setting": setting.name,
                    "limit": in_container(mode.name, "limit", "--recipients", str(recipients)),
                    "campaign": in_container(mode.name, "campaign", "--recipients", str(recipients),
                                             "--workers", mode.workers),
                })
    finally:
        install_package(mode.name, *versions["this checkout"])
        if timers:
            run(["docker", "exec", container(mode.name), "systemctl", "start", *timers])
    return turns


def compare_markdown(results: dict) -> str:
    """One row per turn, then the medians per version (msg/s between the first and last 250)."""
    lines = [
        f"Run {results['started']} on {results['machine']['cpus']} CPUs, {results['recipients']} recipients, "
        f"package of {results['compare']} against this checkout, turns interleaved.",
        "",
        "| mode | setting | round | version | limit msg/s | msg/s | x limit | msg/s end to end | "
        "sender CPU ms/msg | sent | dup | load 1 min (limit, campaign) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    medians: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for mode, turns in results["versions"].items():
        for turn in turns:
            limit, campaign = turn["limit"]["sending_msg_per_s"], turn["campaign"]
            ratio = round(campaign["sending_msg_per_s"] / limit, 2)
            cpu = round(campaign.get("sender_cpu_s", 0) * 1000 / campaign["recipients"], 2)
            medians.setdefault((mode, turn["version"]), []).append((campaign["sending_msg_per_s"], ratio, cpu))
            lines.append(
                f"| {mode} | {turn['setting']} | {turn['round']} | {turn['version']} | {limit} | "
                f"{campaign['sending_msg_per_s']} | {ratio} | {campaign['end_to_end_msg_per_s']} | {cpu} | "
                f"{campaign['ledger']['sent']} | {campaign['duplicates']} | "
                f"{turn['limit']['loadavg'][0]}, {campaign['loadavg'][0]} |")
    lines += ["", "| mode | version | median msg/s | median x limit | median sender CPU ms/msg |",
              "| --- | --- | --- | --- | --- |"]
    for (mode, version), values in medians.items():
        lines.append(f"| {mode} | {version} | " + " | ".join(
            str(round(statistics.median(value[column] for value in values), 2)) for column in range(3)) + " |")
    # The limit does not depend on the version, and one turn's limit moves with the load of its
    # minute: the median of all of a mode's limits is the steadier yardstick.
    for mode, turns in results["versions"].items():
        limit = statistics.median(turn["limit"]["sending_msg_per_s"] for turn in turns)
        ratios = ", ".join(f"{version} {round(statistics.median(v[0] for v in values) / limit, 2)}"
                           for (name, version), values in medians.items() if name == mode)
        lines.append(f"\n{mode}: median limit of all turns {limit} msg/s; median msg/s x that limit: {ratios}")
    return "\n".join(lines) + "\n"


# --- Report ----------------------------------------------------------------------------------


def rows(results: dict) -> list[dict]:
    """One row per mode and setting; rates also as a ratio to the limit measured just before."""
    table = []
    for mode, block in results["modes"].items():
        limits = [entry["limit"] for entry in block["settings"]]
        rates = [limit["sending_msg_per_s"] for limit in limits]
        table.append({"mode": "smtplib, 1 connection", "setting": f"limit in bench-{mode} (min-max)",
                      "submit_s": None, "last_accept_s": max(limit["last_accept_s"] for limit in limits),
                      "sending": f"{round(sum(rates) / len(rates), 1)} ({min(rates)}-{max(rates)})",
                      "end_to_end": None, "ratio": 1.0, "ratio_e2e": None, "pss": None, "rss": None,
                      "redis": None, "load": max(limit["loadavg"][0] for limit in limits)})
        for entry in block["settings"]:
            run_, limit = entry["campaign"], entry["limit"]["sending_msg_per_s"]
            table.append({
                "mode": mode, "setting": entry["setting"], "submit_s": run_["submit_s"],
                "last_accept_s": run_["last_accept_s"], "sending": run_["sending_msg_per_s"],
                "end_to_end": run_["end_to_end_msg_per_s"],
                "ratio": round(run_["sending_msg_per_s"] / limit, 2),
                "ratio_e2e": round(run_["end_to_end_msg_per_s"] / limit, 2),
                "pss": run_["peak_pss_mib"], "rss": run_["peak_rss_mib"],
                "redis": entry.get("redis_memory", {}).get("bytes_per_email"),
                "load": run_["loadavg"][0], "sent": run_["ledger"]["sent"], "dup": run_["duplicates"],
            })
        if "web_submit" in block:
            web = block["web_submit"]
            table.append({"mode": mode, "setting": "submit from the web page (2,000 recipients, median of 3)",
                          "submit_s": web["web_submit_s_median"], "last_accept_s": None, "sending": None,
                          "end_to_end": None, "ratio": None, "ratio_e2e": None, "pss": None, "rss": None,
                          "redis": None, "load": web["loadavg"][0]})
    return table


def cell(value: object) -> str:
    return "-" if value is None else str(value)


def markdown(results: dict) -> str:
    """The README's table, and the Ansible timings, as Markdown."""
    # --converge-only sends nothing: no campaign size to state.
    campaign = (f"{results['recipients']} recipients, message {results['message_bytes']} bytes as stored; "
                if results["modes"] else "deploy times only; ")
    lines = [
        f"Run {results['started']} on {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}), "
        f"{campaign}load average (1 min) during the run {results['load']['load1_min']}-{results['load']['load1_max']} "
        f"(mean {results['load']['load1_mean']}).",
        "",
        "| mode | setting | submit s | last 250 at s | msg/s (first to last 250) | x limit | msg/s end to end | "
        "x limit end to end | peak PSS MiB (RSS) | Redis B/email | load 1 min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows(results):
        memory = f"{row['pss']} ({row['rss']})" if row["pss"] is not None else "-"
        lines.append(
            f"| {row['mode']} | {row['setting']} | {cell(row['submit_s'])} | {cell(row['last_accept_s'])} | "
            f"{cell(row['sending'])} | {cell(row['ratio'])} | {cell(row['end_to_end'])} | {cell(row['ratio_e2e'])} | "
            f"{memory} | {cell(row['redis'])} | {row['load']} |")
    if not results["modes"]:  # --converge-only: the deploy times alone
        lines = lines[:1]
    lines += ["", deploy_table(results)]
    for mode, block in results["modes"].items():
        lines.append(f"- {mode}: `edupulse-manage version` (start-up alone) {block['startup']['manage_version_s']} s")
    for mode, error in results["errors"].items():
        lines.append(f"- {mode} FAILED: {error.splitlines()[0] if error else ''}")
    return "\n".join(lines) + "\n"


def deploy_table(results: dict) -> str:
    """First converge and no-change re-run per mode (and with Mitogen), with their ratio."""
    lines = ["| mode | strategy | first converge s (changed) | no-change re-run s, median (changed) [min-max] | re-run/first | "
             "load 1 min (first, re-run) | re-deploys s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, times in results["ansible"].items():  # empty with --measure-only
        mode, _, strategy = key.partition(" ")
        first, second = times["first"], times["second"]
        redeploys = ", ".join(f"{v['seconds']}" for k, v in results["reconfigure"].items() if k.startswith(mode + " "))
        lines.append(f"| {mode} | {strategy or 'linear'} | {first['seconds']} ({first['recap'].get('changed')}) | "
                     f"{second['seconds']} ({second['recap'].get('changed')}) {spread(times)} | "
                     f"{second['seconds'] / first['seconds']:.2f} | {first['loadavg'][0]}, {second['loadavg'][0]} | "
                     f"{(redeploys or '-') if not strategy else '-'} |")
    return "\n".join(lines) + "\n"


def spread(times: dict) -> str:
    """[min-max] of the no-change re-runs (results before --reruns have one)."""
    reruns = times.get("reruns") or [times["second"]["seconds"]]
    return f"[{min(reruns)}-{max(reruns)}]"


def write_results(results: dict) -> Path:
    """bench/results/<time>.json and .md, and latest.* pointing at the same content."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / results["started"].replace(":", "")
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"
    for path in (stem.with_suffix(".json"), RESULTS / "latest.json"):
        path.write_text(text)  # first: the raw numbers survive a bug in the table below
    table = markdown(results)
    for path in (stem.with_suffix(".md"), RESULTS / "latest.md"):
        path.write_text(table)
    return stem.with_suffix(".md")


# --- Main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="batch,rq,celery", help="comma-separated subset of batch,rq,celery")
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="leave the bench-<mode> containers running")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure the kept containers as deployed (one setting per mode), no converge")
    parser.add_argument("--settings", default="",
                        help="comma-separated setting names to run (e.g. '50/0 s,2 workers'); default all")
    parser.add_argument("--converge-only", action="store_true",
                        help="only the deploy times (first converge, no-change re-run), no campaigns")
    parser.add_argument("--mitogen", action="store_true",
                        help="also the deploy times with Mitogen's strategy (plugins/strategy; mitogen is in .venv)")
    parser.add_argument("--compare", metavar="REF",
                        help="measure the kept containers with the app package of git commit REF and of "
                             "this checkout in turn (one --settings name per mode)")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: turns of each version")
    parser.add_argument("--reruns", type=int, default=3,
                        help="no-change re-runs after each first converge (the median is reported)")
    parser.add_argument("--prefix", default=PREFIX[0],
                        help="containers are <prefix>-<mode> (default: $EDUPULSE_BENCH_PREFIX or bench)")
    args = parser.parse_args(argv)
    PREFIX[0] = args.prefix
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if args.reruns < 1:
        parser.error(f"--reruns must be 1 or more (got {args.reruns})")
    args.settings = {name.strip() for name in args.settings.split(",") if name.strip()}
    return args


def selected(mode: Mode, names: set[str]) -> Mode:
    """The mode with only the named settings (all of them when none are named)."""
    chosen = [setting for setting in mode.settings if not names or setting.name in names]
    if not chosen:
        raise SystemExit(f"--settings names none of {mode.name}'s: {', '.join(s.name for s in mode.settings)}")
    return Mode(mode.name, chosen, mode.workers, mode.stop_units, mode.redis_db)


def preflight() -> None:
    """Refuse early, with the fix, when the engine, the image or the venv is missing."""
    if not (REPO / ".venv/bin/ansible-playbook").exists():
        raise SystemExit("no .venv: run `make setup` first")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode:
        raise SystemExit("no Docker engine answers: run `make images` first")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode:
        raise SystemExit(f"image {IMAGE} is missing: run `make images` first")


def measure_kept(args: argparse.Namespace, modes: dict[str, Mode], results: dict) -> None:
    """--measure-only: the kept containers, each as deployed with its one selected setting."""
    for mode in args.modes:
        if len(modes[mode].settings) != 1:
            raise SystemExit("--measure-only needs --settings naming one setting per mode (the deployed one)")
        copy_driver(mode)
        results["modes"][mode] = {"startup": in_container(mode, "startup"), "settings": [
            measure_setting(modes[mode], modes[mode].settings[0], args.recipients)]}


def compare_kept(args: argparse.Namespace, modes: dict[str, Mode], results: dict, load: LoadRecorder) -> None:
    """--compare: each kept container, REF's package and this checkout's in turn; its own report."""
    results.update(compare=args.compare, versions={})
    for mode in args.modes:
        if len(modes[mode].settings) != 1:
            raise SystemExit("--compare needs --settings naming one setting per mode (the deployed one)")
        results["versions"][mode] = measure_versions(modes[mode], args.compare, args.rounds, args.recipients)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"compare-{results['started'].replace(':', '')}"
    results["load"], results["load_at_end"] = load.summary(), loadavg()
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    stem.with_suffix(".md").write_text(compare_markdown(results))
    print(stem.with_suffix(".md").read_text())
    log(f"results: {stem}.md and {stem}.json")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    modes = {mode: selected(MODES[mode], args.settings) for mode in args.modes}
    preflight()
    load = LoadRecorder()
    load.start()
    results: dict = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "recipients": args.recipients,
        "machine": machine(), "load_at_start": loadavg(), "ansible": {}, "reconfigure": {}, "modes": {}, "errors": {},
    }
    try:
        if args.compare:
            compare_kept(args, modes, results, load)
            return 0
        if args.measure_only:
            measure_kept(args, modes, results)
            return 0
        first_setting = {mode: modes[mode].settings[0] for mode in args.modes}
        if args.mitogen:
            mitogen_available()  # refused before anything is created or timed
        log(f"creating containers for {', '.join(args.modes)}")
        fresh_hosts(args.modes)
        results["ansible"] = deploy_times(args.modes, first_setting, mitogen=False, reruns=args.reruns)
        if args.mitogen:
            log("fresh containers for the runs with Mitogen")
            fresh_hosts(args.modes)
            times = deploy_times(args.modes, first_setting, mitogen=True, reruns=args.reruns)
            results["ansible"].update({f"{mode} mitogen_linear": times[mode] for mode in args.modes})
        for key, times in results["ansible"].items():
            if "failed" in times["first"] or "failed" in times["second"]:
                results["errors"][key] = times["first"].get("failed") or times["second"]["failed"]
        if args.converge_only:
            return 0
        for mode in args.modes:
            if mode in results["errors"]:
                continue
            try:
                results["modes"][mode] = measure_mode(modes[mode], args.recipients, results["reconfigure"])
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                results["errors"][mode] = str(exc)[-3000:]  # the other modes still run
                log(f"{mode} failed: {str(exc)[-500:]}")
    finally:
        results["load"] = load.summary()
        results["load_at_end"] = loadavg()
        if not args.keep:
            for mode in args.modes:
                subprocess.run(["docker", "rm", "-f", container(mode)], capture_output=True, check=False)
        if results["modes"] or results["ansible"]:
            any_block = next(iter(results["modes"].values()), {"settings": []})
            results["message_bytes"] = any_block["settings"][0]["campaign"].get("mean_message_bytes") if any_block["settings"] else None
            report = write_results(results)
            print(report.read_text())
            log(f"results: {report} and {report.with_suffix('.json')}")
        else:
            (LOGS / "partial.json").parent.mkdir(parents=True, exist_ok=True)
            (LOGS / "partial.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
