"""The site's own bulk-email page, used as a staff member uses it: a real browser through Nginx.

Headless Chromium (Debian's chromium and chromium-driver on the controller, driven by Selenium)
runs in the container's network namespace, so it reaches https://127.0.0.1/ on the server
exactly as a browser there would. It logs in as staff, pastes 500 addresses into the page,
sends, and watches the campaign page (which updates itself) until it says done. Then the SMTP
sink must hold each recipient exactly once, and neither an anonymous visitor nor a signed-in
non-staff user may see the campaign.

One platform per scenario (the first): the browser path does not depend on the Debian version,
the queue mode is what varies, and every mode's scenario runs this file. A screenshot of the
finished campaign page is kept as .cache/artifacts/web-page-<host>.png.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

from e2e_helpers import ensure_staff_user, sink_counts

SCENARIO = os.environ.get("MOLECULE_SCENARIO_NAME", "batch")
FIRST_HOST = f"{SCENARIO}-{os.environ.get('EDUPULSE_NAME_1', 'debian12')}"
testinfra_hosts = [f"docker://{FIRST_HOST}"]

BROWSER_SCRIPT = Path(__file__).resolve().parents[2] / "browser_campaign.py"
ARTIFACTS = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path.cwd())) / ".cache" / "artifacts"
RECIPIENTS = 500
STAFF = ("web-page-staff", "staff-" + uuid.uuid4().hex[:12])
NON_STAFF = ("web-page-student", "student-" + uuid.uuid4().hex[:12])


def ensure_non_staff_user(host, username: str, password: str) -> None:
    """An ordinary site account: active, not staff."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        "User = get_user_model()\n"
        f"user, _ = User.objects.get_or_create(username={username!r})\n"
        "user.is_staff = user.is_superuser = False\n"
        "user.is_active = True\n"
        f"user.set_password({password!r})\n"
        "user.save()\n"
    )
    host.run_expect([0], f"/usr/local/bin/edupulse-manage shell -c {shlex.quote(code)}")


def container_pid(name: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", name],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def run_browser(host, tmp_path: Path) -> dict:
    """Drive the page in the container's network namespace; return what the browser saw."""
    tag = uuid.uuid4().hex[:8]
    addresses = [f"student{i:04d}.{tag}@edupulse.test" for i in range(RECIPIENTS)]
    recipients = tmp_path / "recipients.txt"
    recipients.write_text("\n".join(addresses) + "\n", encoding="utf-8")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / f"web-page-{FIRST_HOST}.png"
    screenshot.unlink(missing_ok=True)
    cmd = [
        "nsenter", f"--net=/proc/{container_pid(FIRST_HOST)}/ns/net", "--",
        sys.executable, str(BROWSER_SCRIPT), "--base", "https://127.0.0.1",
        "--user", STAFF[0], "--password", STAFF[1],
        "--non-staff-user", NON_STAFF[0], "--non-staff-password", NON_STAFF[1],
        "--recipients", str(recipients), "--probe", addresses[0],
        "--subject", f"Exam timetable {tag}", "--screenshot", str(screenshot),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["screenshot"] = str(screenshot)
    return result


def test_staff_member_sends_500_from_the_page_and_each_student_gets_it_once(host, tmp_path):
    ensure_staff_user(host, *STAFF)
    ensure_non_staff_user(host, *NON_STAFF)
    seen = run_browser(host, tmp_path)
    assert "error" not in seen, json.dumps(seen, indent=1)[:4000]

    # The POST answered with the campaign page while the campaign was still going out: the
    # request did not send (500 at 20 per batch, 0.5 s apart, take many seconds in any mode).
    first = seen["first_view"]
    assert int(first["pending"]) > 0, first
    assert first["progress_max"] == str(RECIPIENTS), first

    # The page followed the campaign to the end by itself.
    final = seen["final_view"]
    assert not seen.get("timed_out"), final
    assert final["state"] == "done", final
    assert (final["progress_value"], final["progress_max"]) == (str(RECIPIENTS), str(RECIPIENTS)), final
    assert final["percent"].replace(" ", "") == "100%", final
    assert (final["sent"], final["failed"], final["pending"]) == (str(RECIPIENTS), "0", "0"), final
    assert Path(seen["screenshot"]).stat().st_size > 10_000, "no screenshot of the campaign page"

    received = sink_counts(host, seen["campaign_id"])
    assert received["duplicates"] == [], received["duplicates"][:10]
    assert (received["unique_recipients"], received["messages"]) == (RECIPIENTS, RECIPIENTS), received

    # Nobody but staff sees the campaign: the anonymous visitor is sent to the login page, and
    # the admin login refuses the non-staff account, so it stays on the login page too.
    assert "/admin/login/" in seen["anonymous"]["url"] and not seen["anonymous"]["has_recipient"], seen
    non_staff = seen["non_staff"]
    assert "/admin/login/" in non_staff["url"] and "/admin/login/" in non_staff["campaign_url"], non_staff
    assert not non_staff["has_recipient"], non_staff
