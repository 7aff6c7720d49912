"""Helpers shared by the testinfra suites of every scenario.

A campaign is sent through the deployed app exactly as an operator would (`edupulse-manage
send_campaign` inside the container) to the local SMTP sink, and the sink's Maildir is the
ground truth for "delivered exactly once".
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import yaml

MANAGE = "/usr/local/bin/edupulse-manage"
FAULT_FILE = "/run/smtp-sink/fault"


def redis_cli(host, *args: str, user: str = "") -> str:
    """redis-cli as an ACL user whose password is read from the deployed env files."""
    auth = ""
    if user:
        auth = f"REDISCLI_AUTH=\"$(sed -n 's|.*{user}:\\([^@]*\\)@.*|\\1|p' /etc/edupulse/*.env | head -1)\" "
    cmd = host.run(f"{auth}redis-cli --no-auth-warning {'--user ' + user if user else ''} {' '.join(args)}")
    return (cmd.stdout + cmd.stderr).strip()


# Runs in the app's Django shell (the web app's env file, so its own Redis user): each command
# given, on a connection of its own, and whether Redis refused it. Connections of their own, since
# a SUBSCRIBE that is allowed leaves its connection in pub/sub mode.
WEB_USER_PROBE = """
import json, redis
from django.conf import settings
url = {url}
refused = {{}}
for command in {commands!r}:
    connection = redis.Redis.from_url(url, socket_timeout=5)
    try:
        connection.execute_command(*command)
        refused[command[0]] = False
    except redis.exceptions.NoPermissionError:
        refused[command[0]] = True
    finally:
        connection.close()
print(json.dumps(refused))
"""


def refused_to_the_web_app(host, url: str, *commands: tuple[str, ...]) -> dict[str, bool]:
    """{command: refused?} for each command sent to Redis as the web app's user; `url` is the
    Python expression of its URL in the app's settings (its env file's BULK_EMAIL_..._URL)."""
    code = WEB_USER_PROBE.format(url=url, commands=list(commands))
    return last_json_line(host.check_output(f"{MANAGE} shell --verbosity 0 -c {shlex.quote(code)}"))


def last_json_line(text: str) -> dict[str, Any]:
    """The operator commands print human lines first and one JSON object last."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in output:\n{text}")


def write_recipients(host, count: int) -> str:
    """Write `count` new unique addresses to a file the app user can read; return its path."""
    tag = uuid.uuid4().hex[:8]
    path = f"/tmp/recipients-{tag}.txt"
    script = (
        f"open({path!r}, 'w').write(''.join("
        f"f'student{{i:05d}}.{tag}@edupulse.test\\n' for i in range({count})))"
    )
    host.run_expect([0], f"python3 -c {shlex.quote(script)} && chmod 0644 {path}")
    return path


def send_campaign(host, count: int, subject: str = "Timetable update") -> dict[str, Any]:
    """Send a campaign to `count` new recipients; return the command's JSON plus its stderr."""
    path = write_recipients(host, count)
    cmd = host.run(
        f"{MANAGE} send_campaign --subject {shlex.quote(subject)} "
        f"--body 'Dear student, your timetable changed.' --recipients-file {path} --json"
    )
    assert cmd.rc == 0, f"send_campaign failed:\n{cmd.stdout}\n{cmd.stderr}"
    result = last_json_line(cmd.stdout)
    result["stderr"] = cmd.stderr
    return result


def sink_counts(host, campaign_id: str) -> dict[str, Any]:
    """What the SMTP sink received for one campaign."""
    out = host.check_output("smtp-sink-count")
    empty = {"messages": 0, "unique_recipients": 0, "duplicates": []}
    return json.loads(out)["by_campaign"].get(campaign_id, empty)


def campaign_status(host, campaign_id: str) -> dict[str, Any]:
    """The app's own ledger counts for a campaign (a Django start: for assertions, not polls)."""
    return last_json_line(host.check_output(f"{MANAGE} campaign_status {campaign_id} --json"))


APP_ENV = "/etc/edupulse/edupulse.env"
# Runs inside the container, as the database file's owner (the app's user: a file SQLite adds,
# such as the WAL index, then belongs to it as if the app had made it): the counts of
# campaign_status's ledger part (Campaign.counts() and sending()), from one query, without Django.
LEDGER_COUNTS = r"""
import json, sqlite3, sys, uuid
db, campaign = sys.argv[1], uuid.UUID(sys.argv[2]).hex  # Django keeps a UUID as 32 hex digits
connection = sqlite3.connect(db, timeout=20)
if not connection.execute("SELECT 1 FROM bulk_email_campaign WHERE id = ?", (campaign,)).fetchone():
    sys.exit(f"unknown campaign {sys.argv[2]}")
counts = {"pending": 0, "sent": 0, "failed": 0, "sending": 0}
for status, number, claimed in connection.execute(
    "SELECT status, COUNT(*), SUM(claimed_at IS NOT NULL) FROM bulk_email_delivery"
    " WHERE campaign_id = ? GROUP BY status", (campaign,)):
    counts[status] = number
    if status == "pending":
        counts["sending"] = claimed or 0
counts["recipients"] = counts["pending"] + counts["sent"] + counts["failed"]
print(json.dumps(counts))
"""
_SQLITE_PATHS: dict[str, str] = {}


def sqlite_path(host) -> str:
    """The app's SQLite file (DJANGO_SQLITE_PATH), or "" where the ledger is PostgreSQL's."""
    name = host.backend.get_pytest_id()
    if name not in _SQLITE_PATHS:
        match = re.search(r'^DJANGO_SQLITE_PATH="([^"]+)"', host.file(APP_ENV).content_string, re.M)
        _SQLITE_PATHS[name] = match.group(1) if match else ""
    return _SQLITE_PATHS[name]


def ledger_counts(host, campaign_id: str) -> dict[str, int]:
    """pending, sent, failed, sending and recipients of a campaign, cheaply: for wait loops.

    One sqlite3 query in the container (python3 without Django: a few milliseconds, where
    `edupulse-manage campaign_status` starts Django each time); campaign_status() where the
    ledger is not SQLite (the cluster's PostgreSQL).
    """
    db = sqlite_path(host)
    if not db:
        status = campaign_status(host, campaign_id)
        return {key: status[key] for key in ("pending", "sent", "failed", "sending", "recipients")}
    out = host.check_output(
        f"runuser -u \"$(stat -c %U {shlex.quote(db)})\" -- python3 -c {shlex.quote(LEDGER_COUNTS)} "
        f"{shlex.quote(db)} {shlex.quote(campaign_id)}"
    )
    return json.loads(out)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    """Poll until predicate() is true: a bounded wait, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@contextmanager
def smtp_stalled(host, seconds: int = 3) -> Iterator[None]:
    """While inside, the sink waits `seconds` before answering each RCPT TO.

    For killing workers mid-send: after a moment every sender is waiting on
    the server, so a kill interrupts a transaction the server cannot have
    accepted. A kill that lands between the server's 250 and the ledger's
    commit would make the message go out twice (the one window no SMTP
    sender can close; README, "Nothing lost"); at random times that window
    is hit often with a local sink, so a test that killed at random would
    test luck rather than recovery.
    """
    set_sink_fault(host, f"stall {seconds}")
    try:
        time.sleep(seconds / 2)
        yield
    finally:
        clear_sink_fault(host)


def set_sink_fault(host, fault: str) -> None:
    """Write the sink's fault file ("421", "stall 20", ...); a failed write fails the test."""
    host.run_expect([0], f"echo {shlex.quote(fault)} > {FAULT_FILE}")


def clear_sink_fault(host) -> None:
    """Remove the sink's fault file (the sink answers normally again)."""
    host.run_expect([0], f"rm -f {FAULT_FILE}")


def unit_state(host, unit: str) -> dict[str, str]:
    """MainPID and NRestarts of a systemd unit (a changed pair proves a restart happened)."""
    out = host.check_output(f"systemctl show -p MainPID -p NRestarts {unit}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def redis_run_id(host) -> str:
    """Redis's run_id (INFO server, as the admin user): a new one after every restart."""
    for line in host.check_output("redis-admin-cli INFO server").splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no run_id in INFO server")


def acl_log_entries(host) -> list[dict[str, str]]:
    """ACL LOG (as the admin user) as one dict per entry; [] when no client was denied."""
    lines = host.check_output("redis-admin-cli ACL LOG").splitlines()
    entries: list[dict[str, str]] = []
    for key, value in zip(lines[0::2], lines[1::2]):
        if key == "count" or not entries:
            entries.append({})
        entries[-1][key] = value
    return entries


# Runs inside a host: appends each new command line (what `ps -o args` shows, /proc/<pid>/cmdline)
# to a file, every interval seconds, until killed. Python, not ps: a bare server may lack procps.
PROCESS_SAMPLER = r"""
import glob, os, sys, time
path, interval, seen = sys.argv[1], float(sys.argv[2]), set()
os.umask(0o077)
with open(path, "a") as out:
    while True:
        for name in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                with open(name, "rb") as cmdline:
                    line = cmdline.read().replace(b"\0", b" ").strip()
            except OSError:
                continue
            if line and line not in seen:
                seen.add(line)
                out.write(line.decode(errors="replace") + "\n")
        out.flush()
        time.sleep(interval)
"""


@contextmanager
def process_table_sampled(host, interval: float = 0.05) -> Iterator[list[str]]:
    """While inside, every process's command line on `host` is sampled every `interval` s.

    A background loop in the host (PROCESS_SAMPLER) appends each new command line to a
    root-only file; on leaving, the loop is stopped and the list yielded gets every line seen.
    A process living longer than the interval is seen: rabbitmqctl or psql live far longer.
    """
    path = f"/root/ps-samples-{uuid.uuid4().hex[:8]}"
    start = f"python3 -c {shlex.quote(PROCESS_SAMPLER)} {path} {interval}"
    pid = host.check_output(f"setsid nohup {start} > /dev/null 2>&1 < /dev/null & echo $!").strip()
    seen: list[str] = []
    try:
        yield seen
    finally:
        host.run(f"kill {pid}")
        samples = host.run(f"cat {path}; rm -f {path}").stdout
        seen.extend(samples.splitlines())


def lines_showing(lines: list[str], secrets: dict[str, str]) -> dict[str, list[str]]:
    """For each secret's name, the lines that contain its value (masked): {} when none does."""
    found: dict[str, list[str]] = {}
    for name, value in secrets.items():
        hits = [line.replace(value, "<" + name + ">") for line in lines if value and value in line]
        if hits:
            found[name] = hits[:5]
    return found


def stdin_exec(host, argv: list[str], text: str) -> subprocess.CompletedProcess:
    """Run argv in the host's container with `text` on standard input: a secret on no command line."""
    name = host.backend.host if host.backend.NAME == "ansible" else host.backend.name
    return subprocess.run(["docker", "exec", "-i", name, *argv], input=text, capture_output=True, text=True,
                          check=False, timeout=120)


def start_campaign(host, count: int, subject: str = "Exam timetable") -> str:
    """Submit a campaign (queued modes return at once) and return its id."""
    return send_campaign(host, count, subject)["id"]


def wait_until_settled(host, campaign_id: str, timeout: float = 300) -> dict[str, Any]:
    """Wait (bounded) until no delivery of the campaign is pending; return the app's status
    (campaign_status: the app's own command has the last word, the poll is the cheap query)."""
    wait_for(lambda: ledger_counts(host, campaign_id)["pending"] == 0, timeout=timeout, interval=1)
    return campaign_status(host, campaign_id)


def wait_until_sending(host, campaign_id: str, at_least: int, timeout: float = 120) -> None:
    """Wait (bounded) until at least `at_least` deliveries of the campaign are sent; fail if not."""
    assert wait_for(lambda: ledger_counts(host, campaign_id)["sent"] >= at_least, timeout=timeout, interval=0.5), \
        ledger_counts(host, campaign_id)


def assert_delivered_exactly_once(host, campaign_id: str, count: int, timeout: float = 300) -> None:
    """The ledger says all sent, and the SMTP server got each recipient exactly once."""
    status = wait_until_settled(host, campaign_id, timeout)
    received = sink_counts(host, campaign_id)
    assert (status["sent"], status["failed"], status["pending"]) == (count, 0, 0), status
    assert received["duplicates"] == [], received["duplicates"][:10]
    assert received["unique_recipients"] == count
    assert received["messages"] == count


# The start of the scripts below, which run inside the container: an HTTPS client that follows
# no redirect and accepts the site's self-signed certificate.
HTTPS_CLIENT = r"""
import base64, json, re, ssl, sys, urllib.error, urllib.parse, urllib.request
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
"""

# Runs inside the container: one request, no redirects followed, the answer as JSON.
FETCH = HTTPS_CLIENT + r"""
url, auth, tls = sys.argv[1], sys.argv[2], sys.argv[3]
if tls != "any":
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, tls)
opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
request = urllib.request.Request(url)
if auth:
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    response = opener.open(request, timeout=30)
except urllib.error.HTTPError as error:
    response = error
except (urllib.error.URLError, ssl.SSLError, ConnectionError) as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
headers = {}
for name, value in response.headers.items():
    headers.setdefault(name.lower(), []).append(value)
body = response.read(4096).decode("utf-8", "replace")
print(json.dumps({"status": response.status, "headers": headers, "body": body}))
"""


def fetch(host, path: str, scheme: str = "https", auth: str = "", tls: str = "any") -> dict:
    """GET scheme://127.0.0.1<path> inside the container."""
    url = f"{scheme}://127.0.0.1{path}"
    out = host.check_output(
        f"python3 -c {shlex.quote(FETCH)} {shlex.quote(url)} {shlex.quote(auth)} {shlex.quote(tls)}"
    )
    return json.loads(out)


# Runs inside the container: logs in to Django's admin through Nginx as a staff user (CSRF
# cookie and token, the Referer an HTTPS POST needs), then GETs a page with the session; prints
# every answer's status and location, and the last page's body, as JSON.
LOGIN_FETCH = HTTPS_CLIENT + r"""
base, username, password, page = sys.argv[1:5]
opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
cookies = {}
def call(path, data=None, referer=None):
    request = urllib.request.Request(base + path, data=data)
    if cookies:
        request.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
    if referer:
        request.add_header("Referer", referer)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        response = opener.open(request, timeout=30)
    except urllib.error.HTTPError as error:
        response = error
    for header in response.headers.get_all("Set-Cookie") or []:
        name, _, value = header.split(";", 1)[0].partition("=")
        cookies[name.strip()] = value.strip()
    body = response.read().decode("utf-8", "replace")
    return {"status": response.status, "location": response.headers.get("Location", ""), "body": body}
login_path = "/admin/login/?next=" + urllib.parse.quote(page)
form = call(login_path)
token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form["body"])
fields = {"username": username, "password": password, "next": page,
          "csrfmiddlewaretoken": token.group(1) if token else ""}
login = call(login_path, urllib.parse.urlencode(fields).encode(), referer=base + login_path)
result = call(page)
print(json.dumps({
    "form": form["status"], "csrf_cookie": "csrftoken" in cookies, "login": login["status"],
    "login_location": login["location"], "session_cookie": "sessionid" in cookies,
    "status": result["status"], "location": result["location"], "body": result["body"],
}))
"""


def ensure_staff_user(host, username: str, password: str) -> None:
    """Create (or reset) a Django superuser, which is staff, with this password."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        "User = get_user_model()\n"
        f"user = User.objects.filter(username={username!r}).first()\n"
        f"user = user or User.objects.create_superuser({username!r}, 'staff@edupulse.test', None)\n"
        "user.is_staff = user.is_superuser = user.is_active = True\n"
        f"user.set_password({password!r})\n"
        "user.save()\n"
    )
    host.run_expect([0], f"{MANAGE} shell -c {shlex.quote(code)}")


def fetch_as_staff(host, path: str, username: str, password: str) -> dict:
    """Log in through Nginx (https://127.0.0.1, a name in ALLOWED_HOSTS) and GET path."""
    out = host.check_output(
        f"python3 -c {shlex.quote(LOGIN_FETCH)} https://127.0.0.1 {shlex.quote(username)} "
        f"{shlex.quote(password)} {shlex.quote(path)}"
    )
    return json.loads(out)


# --- Nginx (roles/nginx): shared by the per-mode suite and the mode-independent one ------------
SECURITY_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")
# The body of Nginx's own 404 page, which Django's never contains.
NGINX_404 = "<center>nginx</center>"


def env_value(host, name: str) -> str:
    """A variable of the deployed app's env file (KEY="value" lines)."""
    match = re.search(rf'^{name}="([^"]*)"', host.file(APP_ENV).content_string, re.M)
    assert match, f"no {name} in {APP_ENV}"
    return match.group(1)


def queue_mode(host) -> str:
    """batch, rq or celery: the mode the deployed app runs (its env file)."""
    mode = env_value(host, "BULK_EMAIL_QUEUE_MODE")
    assert mode in ("batch", "rq", "celery"), mode
    return mode


def assert_security_headers(answer: dict) -> None:
    """Each header present exactly once (Nginx's, the app's own copies hidden)."""
    for name in SECURITY_HEADERS:
        values = answer["headers"].get(name.lower(), [])
        assert len(values) == 1, f"{name}: {values} on a {answer['status']} answer"
    assert answer["headers"]["strict-transport-security"][0].startswith("max-age=")
    assert answer["headers"]["x-content-type-options"] == ["nosniff"]


def site_config(rendered_config: str) -> str:
    """Our site file out of the `nginx -T` dump."""
    return rendered_config.split("# configuration file /etc/nginx/sites-enabled/edupulse.conf:", 1)[1]


# --- running playbooks of the repo against the scenario's containers -------------------------
def run_playbook(playbook: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """ansible-playbook <playbook> <args> with the scenario's inventory, as Molecule runs it.

    From the repo root, in Molecule's verify environment (its ansible.cfg and roles path), in
    plain text with stderr merged into stdout in order, as an operator would read it.
    """
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    command = [str(Path(sys.executable).with_name("ansible-playbook")), playbook,
               "-i", os.environ["MOLECULE_INVENTORY_FILE"], *args]
    env = {**os.environ, "ANSIBLE_ROLES_PATH": f"{project}/roles", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    return subprocess.run(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False, timeout=timeout)


def converge_arguments() -> tuple[str, list[str]]:
    """The scenario's converge playbook and the ansible-playbook arguments its molecule.yml adds.

    Read from molecule.yml itself (provisioner.playbooks.converge, ansible.executor.args), with
    ${VAR} expanded as Molecule does, so a re-run is exactly the scenario's converge.
    """
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    config = yaml.safe_load((scenario / "molecule.yml").read_text()) or {}
    playbook = config.get("provisioner", {}).get("playbooks", {}).get("converge", "converge.yml")
    args = config.get("ansible", {}).get("executor", {}).get("args", {}).get("ansible_playbook", [])
    return str(scenario / playbook), [os.path.expandvars(arg) for arg in args]


def run_converge(*args: str) -> subprocess.CompletedProcess:
    """The scenario's converge playbook again (Molecule's own skip tags), plus `args`."""
    playbook, scenario_args = converge_arguments()
    return run_playbook(playbook, "--skip-tags", "molecule-notest,notest", *scenario_args, *args)


def converge_hostname(host) -> str:
    """The name that the scenario's converge inventory gives a testinfra host (its container).

    Molecule's inventory names each host after its container. A scenario that adds an inventory
    of its own (molecule/production: the copied inventories/production, whose edupulse-prod-1
    reaches the container through ansible_host) names it as that inventory does.
    """
    # The ansible backend's host name (Molecule's inventory), or a docker:// host's container.
    container = getattr(host.backend, "host", None) or host.backend.name
    return _converge_hostnames().get(container, container)


@functools.cache
def _converge_hostnames() -> dict[str, str]:
    """{container: inventory name} from the scenario's own inventory options, templated as a run
    templates them (ansible's debug on each host, which connects to none; its JSON result)."""
    _, args = converge_arguments()
    options = [arg for arg in args if arg.startswith(("--inventory=", "--vault-password-file="))]
    if not any(arg.startswith("--inventory=") for arg in options):
        return {}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "all", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         *options, "-m", "ansible.builtin.debug", "-a", "msg={{ ansible_host | default(inventory_hostname) }}"],
        cwd=os.environ["MOLECULE_PROJECT_DIRECTORY"], capture_output=True, text=True, check=False,
        # The result as JSON, not as lines that Molecule's environment colours.
        env={**os.environ, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # profile_tasks (ansible.cfg) prints its timing lines around the JSON document.
    start = 0 if result.stdout.startswith("{") else result.stdout.index("\n{") + 1
    document, _ = json.JSONDecoder().raw_decode(result.stdout, start)
    hosts = document["plays"][0]["tasks"][0]["hosts"]
    return {answer["msg"]: name for name, answer in hosts.items()}


def play_recap(output: str, hostname: str) -> dict[str, int]:
    """The PLAY RECAP counters (ok, changed, failed, ...) of one host."""
    match = re.search(rf"^{re.escape(hostname)}\s*:(.*)$", output, re.M)
    assert match, f"no PLAY RECAP line for {hostname}:\n{output[-3000:]}"
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def check_run_without_full_converge(host) -> tuple[str, str]:
    """`--check` of the scenario's converge on ``host`` alone, as a user runs it: the roles compare
    the host with their converge record and skip what matches (the scenarios' own runs set
    edupulse_full_converge, .config/molecule/config.yml). Returns (output, inventory name)."""
    name = converge_hostname(host)
    result = run_converge("--check", "--limit", name, "-e", "edupulse_full_converge=false")
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout, name


def skipped_converges(output: str, hostname: str) -> dict[str, bool]:
    """{role: whether its converge was skipped on ``hostname``} for each role that compared the host
    with its record ("<role> : Converge ... (skipped while the host is as the last full run left it)")."""
    found, role = {}, None
    for line in output.splitlines():
        match = re.match(r"TASK \[(\w+) : Converge .*\(skipped while the host is as the last full run left it\)\]", line)
        if match:
            role = match.group(1)
        elif line.startswith("TASK [") or line.startswith("PLAY "):
            role = None
        elif role and line.startswith(f"skipping: [{hostname}]"):
            found[role] = True
        elif role and line.startswith("included: ") and hostname in line.split(" for ", 1)[-1].split(", "):
            found[role] = False
    return found


def changed_tasks(output: str) -> list[str]:
    """The "changed: [host]" lines with the task each belongs to (what to fix when one is)."""
    task, found = "", []
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip(" *")
        elif line.startswith("changed:"):
            found.append(f"{task}: {line}")
    return found
