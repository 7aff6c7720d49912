#!/usr/bin/python3
"""The measuring half of the bench, run inside a deployed container by bench/run.py.

    python3 in_container.py campaign --recipients 1000 --workers REGEX [--label L]
    python3 in_container.py limit --recipients 1000
    python3 in_container.py redis-memory --recipients 1000 --stop UNIT... [--db N]
    python3 in_container.py startup
    python3 in_container.py web-submit --recipients 2000 [--repeat 3]

Each subcommand prints one JSON object on its last line. Standard library only:
it runs with the container's system python3, next to the deployed app and the
SMTP sink, so nothing crosses a network and the clock is the sink's own.

Why measured like this:
* "accepted" is the Maildir file the sink wrote before answering 250
  (smtp_sink.py), so first and last acceptance come from the server's side,
  identical for the app and for the single-connection limit.
* The limit is the same message to the same recipients through the same sink
  with STARTTLS and the same trust store, from one plain smtplib client on one
  reused connection: what one sender can get out of this server, with no
  ledger, no queue and no Django.
* "submit from the web page" is what a staff member waits for: the POST of the site's own
  bulk-email form (through Nginx on https://127.0.0.1, logged in as staff, CSRF token and
  all) until its redirect to the campaign page arrives. No process start is in it.
* Memory is sampled from /proc (RSS every 100 ms, PSS every second) for the
  processes whose command line matches --workers (the batch sender, the rq workers and their
  work-horses, the celery worker and its children). RSS counts pages shared
  between a parent and its forked children once per process; PSS splits
  them, so the PSS sum is what the mode really costs and the RSS sum its
  upper bound. The senders' CPU time is read from /proc/PID/stat at the same samples.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path

WORKDIR = Path("/tmp/edupulse-bench")  # readable by the app's user (edupulse-manage runs as it)
HERE = Path(__file__).resolve().parent
MAILDIR = Path("/var/lib/smtp-sink/Maildir")
SUBJECT = "Term 3 timetable changes and parent-teacher interviews"
SENDER = "EduPulse demo <noreply@edupulse.test>"
SMTP_HOST, SMTP_PORT = "127.0.0.1", 2525


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (the host's: containers share its kernel)."""
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def recipients(count: int, tag: str) -> list[str]:
    """Distinct addresses; the tag keeps campaigns apart in the sink's counts."""
    return [f"student{number:04d}.{tag}@school.edupulse.test" for number in range(1, count + 1)]


def clear_maildir() -> None:
    """Start every measurement from an empty Maildir, so its files are this run's only."""
    for sub in ("new", "cur", "tmp"):
        for path in (MAILDIR / sub).glob("*"):
            path.unlink()


def maildir_times() -> list[int]:
    """Modification times (ns) of the stored messages: when the sink accepted each one."""
    return sorted(entry.stat().st_mtime_ns for entry in os.scandir(MAILDIR / "new"))


def maildir_sizes() -> list[int]:
    """Sizes of the stored messages (the sink adds two envelope headers to each)."""
    return [entry.stat().st_size for entry in os.scandir(MAILDIR / "new")]


def wait_for_messages(count: int, timeout: float) -> int:
    """Poll the Maildir until ``count`` messages arrived (or the timeout); return how many did."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = sum(1 for _ in os.scandir(MAILDIR / "new"))
        if seen >= count:
            return seen
        time.sleep(0.1)  # the times come from the files, so polling slower loses no accuracy
    return seen


class MemorySampler(threading.Thread):
    """Sum RSS (every ``interval`` s) and PSS (every ``pss_every`` samples) of matching processes.

    Cheap on purpose, because it runs beside what it measures: each process's
    command line is read once (a pid's match is cached), RSS comes from
    /proc/PID/statm, and only PSS reads smaps_rollup, which walks the whole
    address space under the process's memory lock; read at 10 Hz it halved
    the rq workers' rate on a loaded machine (bench README).
    """

    PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

    def __init__(self, pattern: str, interval: float = 0.1, pss_every: int = 10) -> None:
        super().__init__(daemon=True)
        self.pattern = re.compile(pattern)
        self.interval, self.pss_every = interval, pss_every
        self.stopped = threading.Event()
        self.known: dict[str, bool] = {}
        self.peak_rss_kb = self.peak_pss_kb = self.peak_processes = self.samples = 0
        self.cpu_ticks: dict[str, int] = {}  # pid -> last user + system time seen

    def _matches(self, pid: str) -> bool:
        """Whether the process's command line matches (read once per pid; a miss once a second).

        A miss is read again because a process sampled between systemd's fork and its exec
        still has PID 1's command line; its CPU time is cumulative, so nothing of it is lost.
        """
        if self.samples % self.pss_every == 0 and self.known.get(pid) is False:
            del self.known[pid]
        if pid not in self.known:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                return False
            self.known[pid] = bool(self.pattern.search(cmdline)) and int(pid) != os.getpid()
        return self.known[pid]

    def matching(self) -> list[str]:
        """Pids of the processes to measure (never this sampler's own process)."""
        return [entry for entry in os.listdir("/proc") if entry.isdigit() and self._matches(entry)]

    def _rss_kb(self, pid: str) -> int:
        try:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self.PAGE_KB
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def _pss_kb(pid: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def _cpu(self, pid: str) -> None:
        """Remember the process's user + system ticks (/proc/PID/stat fields 14 and 15)."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu_ticks[pid] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass

    def sample(self, with_pss: bool = True) -> tuple[int, int, int]:
        """(RSS kB, PSS kB or 0, processes) of the matching processes right now."""
        pids = self.matching()
        for pid in pids:
            self._cpu(pid)
        rss = sum(self._rss_kb(pid) for pid in pids)
        pss = sum(self._pss_kb(pid) for pid in pids) if with_pss else 0
        return rss, pss, len(pids)

    def run(self) -> None:
        while not self.stopped.is_set():
            rss, pss, count = self.sample(with_pss=self.samples % self.pss_every == 0)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            self.peak_processes = max(self.peak_processes, count)
            self.samples += 1
            self.stopped.wait(self.interval)

    def result(self) -> dict:
        """Peaks in MiB, and how many samples they come from."""
        self.stopped.set()
        self.join(timeout=5)
        return {
            "peak_rss_mib": round(self.peak_rss_kb / 1024, 1),
            "peak_pss_mib": round(self.peak_pss_kb / 1024, 1),
            "peak_processes": self.peak_processes,
            "memory_samples": self.samples,
            # CPU seconds of the senders as last sampled (start-up included; at most one
            # interval of each process's end is missed).
            "sender_cpu_s": round(sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK"), 2),
        }


def manage(*args: str, timeout: float = 900) -> str:
    """Run edupulse-manage (the operator's command, as the services run) and return stdout."""
    result = subprocess.run(
        ["edupulse-manage", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode:
        raise RuntimeError(f"edupulse-manage {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


def last_json(output: str) -> dict:
    """The JSON summary line the project's commands print last."""
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def write_inputs(count: int, tag: str) -> dict[str, Path]:
    """Recipient list and bodies in a directory the app's user can read."""
    WORKDIR.mkdir(mode=0o755, exist_ok=True)
    files = {
        "recipients": WORKDIR / f"recipients-{tag}.txt",
        "body": WORKDIR / "message.txt",
        "html": WORKDIR / "message.html",
    }
    files["recipients"].write_text("\n".join(recipients(count, tag)) + "\n")
    for key, name in (("body", "message.txt"), ("html", "message.html")):
        files[key].write_text((HERE / name).read_text())
    for path in files.values():
        path.chmod(0o644)
    return files


def submit(count: int, tag: str) -> tuple[dict, float, float]:
    """Run send_campaign; return its summary, its start (epoch s) and how long it took."""
    files = write_inputs(count, tag)
    start = time.time()
    output = manage(
        "send_campaign", "--subject", SUBJECT, "--body-file", str(files["body"]),
        "--html-file", str(files["html"]), "--recipients-file", str(files["recipients"]), "--json",
    )
    return last_json(output), start, time.time() - start


def acceptance(start: float, count: int) -> dict:
    """First/last acceptance after ``start`` and the two rates the README reports."""
    times = maildir_times()
    sizes = maildir_sizes()
    if not times:
        return {"accepted": 0}
    first, last = times[0] / 1e9 - start, times[-1] / 1e9 - start
    return {
        "accepted": len(times),
        "first_accept_s": round(first, 3),
        "last_accept_s": round(last, 3),
        # From the operator's Enter to the last 250: what a user of the mode waits.
        "end_to_end_msg_per_s": round(count / last, 1) if last > 0 else None,
        # Between the first and the last 250: the sending rate, start-up excluded.
        "sending_msg_per_s": round((len(times) - 1) / (last - first), 1) if last > first else None,
        "mean_message_bytes": round(sum(sizes) / len(sizes)),
    }


def duplicates(campaign_id: str) -> int:
    """Recipients of the campaign the sink got more than once (must be 0)."""
    counts = json.loads(subprocess.run(["smtp-sink-count"], capture_output=True, text=True, check=True).stdout)
    return len(counts["by_campaign"].get(campaign_id, {}).get("duplicates", []))


def cmd_campaign(args: argparse.Namespace) -> dict:
    """One campaign through the deployed mode, with memory sampled until the last message."""
    clear_maildir()
    sampler = MemorySampler(args.workers)
    idle = sampler.sample()
    load = loadavg()
    sampler.start()
    summary, start, submit_s = submit(args.recipients, args.label or secrets.token_hex(3))
    arrived = wait_for_messages(args.recipients, args.timeout)
    memory = sampler.result()
    status = last_json(manage("campaign_status", summary["id"], "--json"))
    return {
        "campaign": summary["id"], "recipients": args.recipients, "submit_s": round(submit_s, 3),
        **acceptance(start, args.recipients), **memory,
        "idle_rss_mib": round(idle[0] / 1024, 1), "idle_pss_mib": round(idle[1] / 1024, 1),
        "idle_processes": idle[2], "arrived": arrived, "ledger": status,
        "duplicates": duplicates(summary["id"]), "loadavg": load,
    }


def limit_messages(count: int, tag: str) -> list[tuple[str, bytes]]:
    """The campaign's message once per recipient (text + HTML, as the app builds it), as bytes.

    Built before the connection opens and outside the timing: the limit is
    what the server and the protocol allow one connection, so the client
    spends nothing but the sending on it, which makes it the strictest bar.
    """
    text, html = (HERE / "message.txt").read_text(), (HERE / "message.html").read_text()
    campaign = f"limit-{tag}"
    messages = []
    for address in recipients(count, tag):
        message = EmailMessage()
        message["Subject"], message["From"], message["To"] = SUBJECT, SENDER, address
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain="edupulse.test")
        message["X-EduPulse-Campaign"] = campaign
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        messages.append((address, message.as_bytes(policy=SMTP)))
    return messages


def cmd_limit(args: argparse.Namespace) -> dict:
    """The single-connection limit: one smtplib client, STARTTLS verified, one connection reused."""
    clear_maildir()
    load = loadavg()
    messages = limit_messages(args.recipients, secrets.token_hex(3))
    context = ssl.create_default_context()  # the system trust store, as Django's backend uses
    start = time.time()
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=60) as client:
        client.starttls(context=context)
        for address, content in messages:
            client.sendmail("noreply@edupulse.test", [address], content)
    client_s = time.time() - start
    arrived = wait_for_messages(args.recipients, 60)
    return {
        "recipients": args.recipients, "client_s": round(client_s, 3),
        **acceptance(start, args.recipients), "arrived": arrived, "loadavg": load,
    }


def redis_used_memory(db_keys: int) -> dict:
    """used_memory of the Redis server and the key count of database ``db_keys``."""
    info = subprocess.run(
        ["redis-admin-cli", "INFO", "memory"], capture_output=True, text=True, check=True
    ).stdout
    used = int(re.search(r"^used_memory:(\d+)", info, re.MULTILINE).group(1))
    keys = subprocess.run(
        ["redis-admin-cli", "-n", str(db_keys), "DBSIZE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {"used_memory": used, "keys": int(keys or 0)}


def settled_memory(db: int) -> dict:
    """used_memory once two readings a second apart agree within 1 KiB (clients gone)."""
    previous = redis_used_memory(db)
    for _ in range(10):
        time.sleep(1)
        current = redis_used_memory(db)
        if abs(current["used_memory"] - previous["used_memory"]) < 1024:
            return current
        previous = current
    return previous


def systemctl(action: str, units: list[str]) -> None:
    """Start or stop the given units (the workers) and wait for systemd to finish."""
    subprocess.run(["systemctl", action, *units], check=True, timeout=900)


def cmd_redis_memory(args: argparse.Namespace) -> dict:
    """Redis memory per queued email: submit with the workers stopped, read used_memory, drain."""
    systemctl("stop", args.stop)
    try:
        clear_maildir()
        before = settled_memory(args.db)
        summary, start, submit_s = submit(args.recipients, secrets.token_hex(3))
        after = settled_memory(args.db)
    finally:
        systemctl("start", args.start or args.stop)
    arrived = wait_for_messages(args.recipients, args.timeout)
    grown = after["used_memory"] - before["used_memory"]
    return {
        "campaign": summary["id"], "recipients": args.recipients,
        "submit_s_workers_stopped": round(submit_s, 3), "before": before, "after": after,
        "bytes_per_email": round(grown / args.recipients, 1),
        "drain_from_full_queue": acceptance(start, args.recipients), "arrived": arrived,
    }


def cmd_startup(args: argparse.Namespace) -> dict:
    """The fixed cost in every submit: edupulse-manage starting Django and exiting."""
    runs = []
    for _ in range(args.repeat):
        start = time.time()
        manage("version")
        runs.append(time.time() - start)
    return {"manage_version_s": round(min(runs), 3), "runs": [round(r, 3) for r in runs]}


class Site:
    """A staff member's browser session with the deployed site, through Nginx (standard library)."""

    def __init__(self, base: str = "https://127.0.0.1") -> None:
        import http.cookiejar
        import urllib.request

        context = ssl.create_default_context()
        context.check_hostname = False  # the site's certificate is self-signed
        context.verify_mode = ssl.CERT_NONE

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            NoRedirect, urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(self.cookies),
        )

    def call(self, path: str, fields: dict | None = None) -> tuple[int, str, str]:
        """GET, or POST ``fields`` with the CSRF token and Referer Django wants; no redirects."""
        import urllib.error
        import urllib.parse
        import urllib.request

        data = None
        request = urllib.request.Request(self.base + path)
        if fields is not None:
            token = next((c.value for c in self.cookies if c.name == "csrftoken"), "")
            data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token}).encode()
            request.add_header("Referer", self.base + path)
        try:
            response = self.opener.open(request, data=data, timeout=120)
        except urllib.error.HTTPError as error:
            response = error
        return response.status, response.headers.get("Location", ""), response.read().decode("utf-8", "replace")

    def log_in(self, user: str, password: str) -> None:
        self.call("/admin/login/")
        status, location, _ = self.call("/admin/login/", {"username": user, "password": password, "next": "/"})
        if status != 302:
            raise RuntimeError(f"staff login failed: HTTP {status}")


def cmd_web_submit(args: argparse.Namespace) -> dict:
    """POST the site's bulk-email page with --recipients addresses, --repeat times; time each."""
    user, password = "bench-staff", secrets.token_hex(12)
    manage("shell", "-c", (
        "from django.contrib.auth import get_user_model\n"
        "User = get_user_model()\n"
        f"u = User.objects.filter(username={user!r}).first() or User.objects.create_superuser({user!r}, '', None)\n"
        f"u.set_password({password!r}); u.save()\n"
    ))
    site = Site()
    site.log_in(user, password)
    load = loadavg()
    runs, campaigns = [], []
    for number in range(args.repeat):
        tag = secrets.token_hex(3)
        site.call("/")  # the form, as a person opens it first (fresh CSRF cookie)
        fields = {"subject": f"{SUBJECT} {tag}", "body": "Dear student, the timetable changed.",
                  "recipients": "\n".join(recipients(args.recipients, tag))}
        start = time.perf_counter()
        status, location, _ = site.call("/", fields)
        runs.append(time.perf_counter() - start)
        if status != 302 or "/bulk-email/campaigns/" not in location:
            raise RuntimeError(f"the page did not redirect to a campaign: HTTP {status} {location}")
        campaigns.append(location.rstrip("/").rsplit("/", 1)[-1])
    ordered = sorted(runs)
    return {
        "recipients": args.recipients, "web_submit_s_min": round(ordered[0], 3),
        "web_submit_s_median": round(ordered[len(ordered) // 2], 3),
        "runs": [round(r, 3) for r in runs], "campaigns": campaigns, "loadavg": load,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    campaign = sub.add_parser("campaign")
    campaign.add_argument("--workers", required=True, help="regex of the sending processes' command lines")
    campaign.add_argument("--label")
    limit = sub.add_parser("limit")
    redis = sub.add_parser("redis-memory")
    redis.add_argument("--stop", nargs="+", required=True, help="units to stop while submitting")
    redis.add_argument("--start", nargs="*", help="units to start afterwards (default: --stop)")
    redis.add_argument("--db", type=int, default=0, help="database whose keys are reported")
    startup = sub.add_parser("startup")
    startup.add_argument("--repeat", type=int, default=3)
    web = sub.add_parser("web-submit")
    web.add_argument("--repeat", type=int, default=3)
    for command in (campaign, limit, redis, startup, web):
        command.add_argument("--recipients", type=int, default=1000)
        command.add_argument("--timeout", type=float, default=900)
    return parser.parse_args(argv)


COMMANDS = {"campaign": cmd_campaign, "limit": cmd_limit, "redis-memory": cmd_redis_memory, "startup": cmd_startup,
            "web-submit": cmd_web_submit}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(json.dumps(COMMANDS[args.command](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
