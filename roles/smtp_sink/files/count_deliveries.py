#!/usr/bin/python3
"""Count the messages an smtp_sink.py Maildir holds, per X-EduPulse-Campaign.

    count_deliveries.py [--maildir /var/lib/smtp-sink/Maildir]

Prints one JSON object:
    {"total": n, "by_campaign": {uuid: {"messages": n, "unique_recipients": n,
                                        "duplicates": [addr, ...]}}}
Recipients come from the envelope (X-Sink-Rcpt-To, written by the sink),
falling back to To:, compared case-insensitively; "duplicates" lists the
addresses that received a campaign more than once, which must stay empty.
Messages without the campaign header are counted under "none".
Standard library only.
"""
import argparse
import json
from collections import Counter, defaultdict
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path


def message_files(maildir: Path) -> list[Path]:
    """Delivered messages: new/ (unread) and cur/ (seen by a mail client)."""
    return sorted(p for sub in ("new", "cur") if (maildir / sub).is_dir() for p in (maildir / sub).iterdir() if p.is_file())


def recipients_of(headers) -> list[str]:
    """Envelope recipients if the sink recorded them, otherwise the To: header."""
    values = headers.get_all("X-Sink-Rcpt-To") or headers.get_all("To") or []
    return [address.lower() for _, address in getaddresses(values) if address]


def count(maildir: Path) -> dict:
    """Build the report described in the module docstring."""
    parser = BytesHeaderParser()
    per_campaign: dict[str, Counter] = defaultdict(Counter)
    messages: Counter = Counter()
    files = message_files(maildir)
    for path in files:
        with path.open("rb") as handle:
            headers = parser.parse(handle)
        campaign = (headers.get("X-EduPulse-Campaign") or "none").strip()
        messages[campaign] += 1
        per_campaign[campaign].update(recipients_of(headers))
    return {
        "total": len(files),
        "by_campaign": {
            campaign: {
                "messages": messages[campaign],
                "unique_recipients": len(per_campaign[campaign]),
                "duplicates": sorted(a for a, n in per_campaign[campaign].items() if n > 1),
            }
            for campaign in sorted(messages)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maildir", type=Path, default=Path("/var/lib/smtp-sink/Maildir"))
    args = parser.parse_args()
    print(json.dumps(count(args.maildir), sort_keys=True))


if __name__ == "__main__":
    main()
