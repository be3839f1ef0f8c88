"""python -m deployment init: make what a deployment needs, keep what it has (see __init__).
The plugins folder must be on PYTHONPATH (docker-compose.yaml's airflow-init sets it)."""

from __future__ import annotations

import argparse
import sys

from . import SCORING_SLOTS, init


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deployment", description=__doc__)
    parser.add_argument("command", choices=["init"])
    parser.add_argument("--scoring-slots", type=int, default=SCORING_SLOTS,
                        help="slots of the pool scoring, where it has to be made (default: %(default)s)")
    args = parser.parse_args()
    for line in init(args.scoring_slots):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
