"""rq mode: the worker class of ``manage.py rqworker`` (django-rq's RQ["WORKER_CLASS"]).

RQ's default worker forks a work-horse for every job, and the horse starts
from the parent's memory: whatever a job loads for itself is loaded again for
every batch. Loading the system trust store for STARTTLS alone cost each job
40-80 ms on a 2-core server (bench/, README "Benchmarks"), 2-4 ms per message
at 20 messages per batch. This worker loads the sending path once, before
its first fork, so every horse inherits it. Everything else is RQ's Worker,
including the fork, which keeps a job's crash or timeout out of the worker.
"""
from __future__ import annotations

from typing import Any

from rq import Worker as RQWorker

from .sending import preload


class Worker(RQWorker):
    """RQ's forking worker, with the SMTP backend and TLS context loaded before it forks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        preload()
