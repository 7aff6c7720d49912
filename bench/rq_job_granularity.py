#!/usr/bin/env python3
"""Bench: rq jobs per recipient or per batch? (not a test; run by hand)

    .venv/bin/python bench/rq_job_granularity.py [--recipients 1000] [--batch-size 20]

Sends one campaign of N recipients each way through the real code path
(bulk_email.rq_jobs.enqueue_campaign and send_batch_job) on a patched copy
of example_app, a private redis-server and an aiosmtpd server on loopback,
and drains the email queue with a burst SimpleWorker (in-process: the
numbers leave out the fork per job of the default Worker, which would only
add to the per-recipient cost). It also times N no-op jobs, the pure RQ
cost of a job. Prints a table, then one JSON line.

Job overhead = (seconds per message with one job per recipient) minus
(seconds per message with one job per batch): what a job of its own plus
an SMTP session of its own cost each message.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "app_patches" / "testing"))

from edupulse_testproject import build_patched_project, free_port  # noqa: E402


def start_redis(port: int, directory: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    time.sleep(0.3)
    return process


class Counter:
    """aiosmtpd handler that only counts accepted messages."""

    def __init__(self) -> None:
        self.messages = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages += 1
        return "250 OK"


def setup_django(workdir: Path, redis_port: int, smtp_port: int) -> None:
    project = build_patched_project(workdir, mode="rq")
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "edupulse.settings", "DJANGO_SECRET_KEY": "bench",
        "DJANGO_SQLITE_PATH": str(workdir / "db.sqlite3"), "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_port), "EMAIL_USE_TLS": "false", "BULK_EMAIL_QUEUE_MODE": "rq",
        "BULK_EMAIL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "BULK_EMAIL_BATCH_DELAY": "0",
        "BULK_EMAIL_DAILY_QUOTA": "0", "DJANGO_LOG_LEVEL": "WARNING",
    })
    sys.path.insert(0, str(project))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def drain(queue) -> float:
    from rq import SimpleWorker

    start = time.perf_counter()
    SimpleWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")
    return time.perf_counter() - start


def run_campaign(recipients: int, batch_size: int, label: str, smtp: Counter) -> dict:
    from django.conf import settings

    from bulk_email.campaigns import create_campaign
    from bulk_email.rq_jobs import email_queue, enqueue_campaign

    settings.BULK_EMAIL_BATCH_SIZE = batch_size
    campaign = create_campaign(label, "Body", [f"s{i:05d}.{label}@bench.test" for i in range(recipients)])
    before = smtp.messages
    queue = email_queue()
    start = time.perf_counter()
    run = enqueue_campaign(campaign)
    enqueue_s = time.perf_counter() - start
    work_s = drain(queue)
    assert campaign.counts()["sent"] == recipients and smtp.messages - before == recipients
    return {
        "jobs": run.batches, "enqueue_s": round(enqueue_s, 3), "work_s": round(work_s, 3),
        "messages_per_s": round(recipients / work_s, 1),
        "ms_per_message": round(1000 * work_s / recipients, 3),
    }


def noop_jobs(count: int) -> dict:
    from bulk_email.rq_jobs import email_queue

    queue = email_queue()
    for _ in range(count):
        queue.enqueue("os.getpid")  # the cheapest importable job: RQ's own bookkeeping
    work_s = drain(queue)
    return {"jobs": count, "work_s": round(work_s, 3), "ms_per_job": round(1000 * work_s / count, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    from aiosmtpd.controller import Controller

    workdir = Path(tempfile.mkdtemp(prefix="rq-bench-"))
    redis = start_redis(free_port(), workdir)
    smtp = Counter()
    controller = Controller(smtp, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        setup_django(workdir, int(redis.args[2]), controller.port)
        per_batch = run_campaign(args.recipients, args.batch_size, "batch", smtp)
        per_recipient = run_campaign(args.recipients, 1, "recipient", smtp)
        empty = noop_jobs(args.recipients)
    finally:
        controller.stop()
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    overhead = per_recipient["ms_per_message"] - per_batch["ms_per_message"]
    print(f"{'granularity':<16}{'jobs':>6}{'enqueue s':>11}{'work s':>9}{'msg/s':>9}{'ms/msg':>9}")
    for name, row in (("per batch", per_batch), ("per recipient", per_recipient)):
        print(f"{name:<16}{row['jobs']:>6}{row['enqueue_s']:>11}{row['work_s']:>9}"
              f"{row['messages_per_s']:>9}{row['ms_per_message']:>9}")
    print(f"no-op job (RQ bookkeeping only): {empty['ms_per_job']} ms/job; "
          f"extra cost of a job per recipient: {overhead:.3f} ms/message")
    print(json.dumps({
        "recipients": args.recipients, "batch_size": args.batch_size, "per_batch": per_batch,
        "per_recipient": per_recipient, "noop_job": empty,
        "job_overhead_ms_per_message": round(overhead, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
