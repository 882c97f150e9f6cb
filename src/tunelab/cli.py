"""The `tunelab` command: helpers around the DVC pipeline.

tunelab profile gpu|smoke     write a profile's values into params.yaml
tunelab params                validate every section of params.yaml
tunelab compare REV_A REV_B   params and metric deltas of two revisions (markdown)
tunelab variants SCENARIO     the LoRA-variants table over HEAD and its experiments
tunelab export SCENARIO       merge adapters/SCENARIO into its base: a plain HF model,
                              or (--format gguf) one .gguf file and an Ollama Modelfile
tunelab gpu-check --out F     every stage of the gpu profile on this GPU, in a scratch copy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunelab.config.outputs import GGUF_QUANTS
from tunelab.errors import TunelabError


def cmd_profile(args: argparse.Namespace) -> None:
    from tunelab.config.profiles import apply_profile

    changed = apply_profile(args.name, Path(args.params))
    print(
        f"profile {args.name}: {len(changed)} values changed in {args.params}"
        + ("" if not changed else " (see `dvc params diff`)")
    )


def cmd_params(args: argparse.Namespace) -> None:
    from tunelab.config import load_params

    sections = load_params(Path(args.params))
    print(f"{args.params}: {len(sections)} sections valid")


def cmd_compare(args: argparse.Namespace) -> None:
    from tunelab.compare import compare

    text = compare(args.rev_a, args.rev_b, Path("."), all_metrics=args.all)
    if args.out:
        from tunelab.io import atomic_file

        with atomic_file(Path(args.out)) as fh:
            fh.write(text)
        print(f"compare: written to {args.out}")
    else:
        print(text)


def cmd_variants(args: argparse.Namespace) -> None:
    from tunelab.compare import variants

    text = variants(args.scenario, args.revs or None, Path("."))
    if args.out:
        from tunelab.io import atomic_file

        with atomic_file(Path(args.out)) as fh:
            fh.write(text)
        print(f"variants: written to {args.out}")
    else:
        print(text)


def cmd_export(args: argparse.Namespace) -> None:
    from tunelab.config import load_section
    from tunelab.export.gguf import check_quant, check_trained_base

    output = load_section("export.output", Path(args.params))
    fmt = args.format or output.format
    if fmt not in ("safetensors", "gguf"):
        raise TunelabError("--format", f"unknown format {fmt!r} (safetensors or gguf)")
    if args.quant is not None and fmt != "gguf":
        raise TunelabError("--quant", "applies to --format gguf only")
    quant = check_quant(args.quant, "--quant") if args.quant is not None else output.quant
    params = load_section("export.merge", Path(args.params))
    adapter = Path(args.adapter) if args.adapter else Path("adapters") / args.scenario
    check_trained_base(adapter)
    if fmt == "gguf":
        from tunelab.export.gguf import export_gguf

        name = f"{args.scenario}-{quant}"
        out = Path(args.out) if args.out else Path("exports") / name
        card = export_gguf(adapter, out, params, quant, name)
        print(
            f"export {args.scenario}: {card['parameters']:,} parameters as GGUF {quant} "
            f"({card['file_bytes'] / 2**20:.1f} MiB) written to {out / card['file']}; "
            f"Ollama: ollama create tunelab-{args.scenario} -f {out / 'Modelfile'}"
        )
        return
    from tunelab.export.merge import export_adapter

    out = Path(args.out) if args.out else Path("exports") / args.scenario
    card = export_adapter(adapter, out, params)
    print(
        f"export {args.scenario}: {card['parameters']:,} parameters ({card['dtype']}) "
        f"written to {out}"
    )


def cmd_gpu_check(args: argparse.Namespace) -> None:
    from tunelab.gpu_check import run_check

    sys.exit(run_check(args, args.argv))


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
    p = sub.add_parser("compare", help="params and metric deltas of two git revisions")
    p.add_argument("rev_a", metavar="REV_A")
    p.add_argument("rev_b", metavar="REV_B")
    p.add_argument("--all", action="store_true", help="list unchanged metrics too")
    p.add_argument("--out", help="write the markdown to this file instead of stdout")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("variants", help="LoRA-variants table of a scenario over experiments")
    p.add_argument("scenario")
    p.add_argument("revs", metavar="REV", nargs="*", help="default: HEAD and its experiments")
    p.add_argument("--out", help="write the markdown to this file instead of stdout")
    p.set_defaults(func=cmd_variants)
    p = sub.add_parser(
        "export",
        help="merge a scenario's adapter into its base model (safetensors or GGUF + Modelfile)",
        description="Merge adapters/SCENARIO into its base. The format and the GGUF "
        "quantization come from params.yaml's export.output; --format and --quant, "
        "when given, override them.",
    )
    p.add_argument("scenario")
    p.add_argument("--adapter", help="adapter folder (default adapters/SCENARIO)")
    p.add_argument(
        "--out",
        help="output folder (default exports/SCENARIO, or exports/SCENARIO-QUANT for gguf)",
    )
    p.add_argument(
        "--format",
        metavar="{safetensors,gguf}",
        help="overrides export.output.format: a merged HF folder, or one .gguf file "
        "with an Ollama Modelfile",
    )
    p.add_argument(
        "--quant",
        metavar="{" + ",".join(GGUF_QUANTS) + "}",
        help="overrides export.output.quant: the GGUF tensor type of the matrices "
        "(norms stay f32); gguf only",
    )
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_export)
    from tunelab.gpu_check import __doc__ as check_doc
    from tunelab.gpu_check import add_arguments

    p = sub.add_parser(
        "gpu-check",
        help="run every stage of the gpu profile on this GPU (random-weight bases)",
        description=check_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_gpu_check)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])[1:]  # after the command
    try:
        args.func(args)
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
