#!/usr/bin/env python3
"""Django's command-line utility for the EduPulse project."""
import os
import sys


def main() -> None:
    """Run a management command with the project's settings module."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edupulse.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
