"""``manage.py queue_switch``: the steps of switching the queue mode of a live server.

Run by the deployment while it switches from OLD to NEW (see bulk_email.switch
for the whole procedure and why it neither loses nor doubles an email):

    queue_switch status --from-mode OLD [--json]
        mode=OLD campaigns=<n> pending=<n> sending=<n> held=<n>
        {"mode", "campaigns", "pending", "sending", "held"}
    queue_switch move --from-mode OLD --to-mode NEW [--release-claims] [--json]
        moved <n> campaigns (<n> pending deliveries) from OLD to NEW[, released <n> claims]
        {"campaigns", "pending", "released"}
    queue_switch dispatch-held [--json]
        dispatched <n> held campaigns (<n> pending deliveries) in mode <mode> | nothing held
        {"campaigns", "pending", "mode", "stopped"}
        (sends nothing itself: rq/celery enqueue, batch hands over to the batch sender,
        ``manage.py batch_sender``; "stopped" is always null, kept for the JSON's readers)

With --json the JSON object is the last line. status counts from the ledger:
"campaigns" of mode OLD with pending deliveries, their "pending" deliveries,
"sending" (those a runner has claimed right now), and "held" (campaigns of any
mode not dispatched yet that have something to send). Unknown modes, OLD ==
NEW, and dispatch-held while the hold file is active are command errors (exit 1).
"""
import json
from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from bulk_email import switch
from bulk_email.modes import NAMES as QUEUE_MODES


class Command(BaseCommand):
    help = "Drain, move and dispatch campaigns while the bulk email queue mode is switched."

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        status = actions.add_parser("status", help="What a mode still has to send, and what is held.")
        status.add_argument("--from-mode", required=True, choices=QUEUE_MODES)
        move = actions.add_parser("move", help="Hand a mode's unfinished campaigns to another mode.")
        move.add_argument("--from-mode", required=True, choices=QUEUE_MODES)
        move.add_argument("--to-mode", required=True, choices=QUEUE_MODES)
        move.add_argument(
            "--release-claims", action="store_true",
            help="Also clear their claims; only once no sender of the old mode runs any more.",
        )
        actions.add_parser("dispatch-held", help="Dispatch the held campaigns in the current mode.")
        for action in (status, move, actions.choices["dispatch-held"]):
            action.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args, **options) -> None:
        handler = {"status": self._status, "move": self._move, "dispatch-held": self._dispatch_held}
        summary = handler[options["action"]](options)
        if options["json"]:
            self.stdout.write(json.dumps(summary))

    def _status(self, options: dict) -> dict:
        summary = switch.status(options["from_mode"])
        self.stdout.write(" ".join(f"{key}={value}" for key, value in summary.items()))
        return summary

    def _move(self, options: dict) -> dict:
        try:
            summary = switch.move(
                options["from_mode"], options["to_mode"], release_claims=options["release_claims"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        line = (
            f"moved {summary['campaigns']} campaigns ({summary['pending']} pending deliveries) "
            f"from {options['from_mode']} to {options['to_mode']}"
        )
        if options["release_claims"]:
            line += f", released {summary['released']} claims"
        self.stdout.write(line)
        return summary

    def _dispatch_held(self, options: dict) -> dict:
        try:
            summary = switch.dispatch_held()
        except switch.HoldActive as exc:
            raise CommandError(str(exc)) from None
        if summary["campaigns"]:
            self.stdout.write(
                f"dispatched {summary['campaigns']} held campaigns ({summary['pending']} pending "
                f"deliveries) in mode {summary['mode']}"
            )
        else:
            self.stdout.write("nothing held")
        if summary["stopped"]:
            self.stdout.write(f"stopped: {summary['stopped']}")
        return summary
