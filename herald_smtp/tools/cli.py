"""The `herald-smtp` command: serve | sink | doctor | status | suppression | bounces."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import load_settings_or_exit
from ..logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herald-smtp", description="Send Herald's mail over SMTP.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service under gunicorn (settings from the environment and .env)")
    doctor = commands.add_parser("doctor", help="check the SMTP setup step by step and the sender domain's SPF, "
                                                "DKIM and DMARC records, and name the fix")
    doctor.add_argument("--to", metavar="ADDRESS", help="also send a test mail to ADDRESS")
    status = commands.add_parser("status", help="print what the relay said about a mail (GET /v1/messages/ID)")
    status.add_argument("message_id", metavar="MESSAGE_ID")
    suppression = commands.add_parser("suppression", help="show, remove or list suppressed recipients")
    suppression.add_argument("action", choices=("show", "remove", "list"))
    suppression.add_argument("address", nargs="?", metavar="ADDRESS")
    commands.add_parser("bounces", help="read the bounce mailbox (BOUNCE_IMAP_URL) and record each notification "
                        "on its message's status (one reader per deployment)")
    sink = commands.add_parser("sink", help="run a local SMTP server that stores each mail as a .eml file")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=2525)
    sink.add_argument("--dir", default="var/mail", help="where .eml files go (default: var/mail)")
    args = parser.parse_args(argv)

    settings = load_settings_or_exit()
    configure_logging(settings)
    if args.command == "serve":
        from .serve import HeraldServer, prepare_metrics_dir

        HeraldServer(prepare_metrics_dir(settings)).run()
        return 0
    if args.command == "doctor":
        from .doctor import run_doctor

        return run_doctor(settings, args.to)
    if args.command == "suppression":
        from .suppression import run_suppression

        if args.action != "list" and not args.address:
            parser.error(f"suppression {args.action} needs an ADDRESS")
        return run_suppression(settings, args.action, args.address)
    if args.command == "status":
        from .status import run_status

        return run_status(settings, args.message_id)
    if args.command == "bounces":
        # One process with a registry of its own: prometheus_client must not write multiprocess files (the
        # image sets the variable for gunicorn), which a restarted container would read back as stale values.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        from .bounces import run_bounces

        return run_bounces(settings)
    from .sink import run_sink

    return run_sink(args.host, args.port, args.dir)


if __name__ == "__main__":
    sys.exit(main())
