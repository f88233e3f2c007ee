"""The `grader` command's parser: each subcommand group adds its own arguments and handler."""

from __future__ import annotations

import argparse

from cli.dataset import add_dataset
from cli.keys import add_keys
from cli.serve import add_serve
from cli.sorter_sim import add_sorter_sim
from cli.synth import add_synth
from training.commands import add_compare, add_evaluate, add_train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grader", description="orchard-grader: fruit quality grading service")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (add_serve, add_train, add_compare, add_evaluate, add_dataset, add_keys, add_synth, add_sorter_sim):
        add(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
