"""`grader sorter-sim`: a stand-in sorter that ejects each published fruit after a delay and
reports it back over MQTT."""

from __future__ import annotations

import argparse
import os
import sys


def _sorter_sim(args: argparse.Namespace) -> int:
    from service.sorter_sim import run

    try:
        tally = run(
            args.mqtt_url,
            prefix=args.prefix,
            line=args.line,
            delay_s=args.delay_s,
            mis_ejection_rate=args.mis_ejection_rate,
            miss_rate=args.miss_rate,
            seed=args.seed,
            count=args.count,
            out=None if args.quiet else lambda m: print(m, flush=True),
            client_id=args.client_id or None,
        )
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:  # broker unreachable, bad URL
        print(f"grader sorter-sim: {exc}", file=sys.stderr)
        return 2
    print("sorter-sim: " + ", ".join(f"{k} {v}" for k, v in tally.items()))
    return 0


def add_sorter_sim(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("sorter-sim", help="a stand-in sorter: ejects each published fruit after a delay and reports it back over MQTT")
    m.add_argument(
        "--mqtt-url",
        default=os.environ.get("GRADER_MQTT_URL") or "mqtt://127.0.0.1:1883",
        help="the broker (default GRADER_MQTT_URL, else mqtt://127.0.0.1:1883)",
    )
    m.add_argument("--prefix", default=os.environ.get("GRADER_MQTT_TOPIC_PREFIX", "orchard-grader"), help="topic prefix")
    m.add_argument("--line", default="+", help="the line to sort (default every line)")
    m.add_argument("--delay-s", type=float, default=1.0, help="from decision to ejection (the belt's travel)")
    m.add_argument("--mis-ejection-rate", type=float, default=0.0, help="share of fruit ejected at another outlet (0-1)")
    m.add_argument("--miss-rate", type=float, default=0.0, help="share of fruit never ejected (0-1)")
    m.add_argument("--count", type=int, help="stop after this many fruit (default: run until Ctrl-C)")
    m.add_argument("--seed", type=int)
    m.add_argument(
        "--client-id",
        default="",
        help="a persistent session under this MQTT client id: decisions sent while the simulator is away wait "
        "for it at the broker (default: a clean session)",
    )
    m.add_argument("--quiet", action="store_true", help="print only the tallies at the end")
    m.set_defaults(func=_sorter_sim)
