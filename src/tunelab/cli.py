"""The `tunelab` command: helpers around the DVC pipeline.

tunelab profile gpu|smoke     write a profile's values into params.yaml
tunelab params                validate every section of params.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunelab.errors import TunelabError


def cmd_profile(args: argparse.Namespace) -> None:
    from tunelab.profiles import apply_profile

    changed = apply_profile(args.name, Path(args.params))
    print(
        f"profile {args.name}: {len(changed)} values changed in {args.params}"
        + ("" if not changed else " (see `dvc params diff`)")
    )


def cmd_params(args: argparse.Namespace) -> None:
    from tunelab.config import load_params

    sections = load_params(Path(args.params))
    print(f"{args.params}: {len(sections)} sections valid")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tunelab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="write a profile (profiles/NAME.yaml) into params.yaml")
    p.add_argument("name")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_profile)
    p = sub.add_parser("params", help="validate params.yaml")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_params)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
