"""`grader keys reset`: new API keys for every role, kept (hashed) in the data dir."""

from __future__ import annotations

import argparse


def _keys(args: argparse.Namespace) -> int:
    from service.auth import new_keys
    from service.settings import Settings

    path = Settings().data_dir / "api_keys.json"
    keys = new_keys(path)
    print(f"new API keys (the old ones no longer work once the service restarts); hashes in {path}:")
    for role, key in keys.items():
        print(f"  {role:<9} {key}")
    return 0


def add_keys(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="API keys kept in the data dir")
    k.add_argument("action", choices=["reset"], help="reset: generate new keys for every role and print them once")
    k.set_defaults(func=_keys)
