"""python -m deployment init: make what a deployment needs, keep what it has (see __init__).
python -m deployment check: prove each piece of a live deployment, one line each (see check.py).
The plugins folder must be on PYTHONPATH (docker-compose.yaml's airflow-init sets it)."""

from __future__ import annotations

import argparse
import sys

from . import SCORING_SLOTS, init


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deployment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["init", "check"])
    parser.add_argument("--scoring-slots", type=int, default=SCORING_SLOTS,
                        help="init: slots of the pool scoring, where it has to be made (default: %(default)s)")
    parser.add_argument("--azureml", action=argparse.BooleanOptionalAction, default=None,
                        help="check: check Azure ML (default: where the azureml_default connection exists)")
    parser.add_argument("--allow-account-keys", action="store_true",
                        help="check: accept storage connections that hold the account key (Azurite, local set-ups)")
    args = parser.parse_args()
    if args.command == "check":
        from .check import check, report

        text, status = report(check(azureml=args.azureml, allow_account_keys=args.allow_account_keys))
        print(text, flush=True)
        return status
    for line in init(args.scoring_slots):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
