"""Stage report: reports/report.md + reports/figures/ + a self-contained reports/report.html.

    python -m stages.report

Covers every scenario whose outputs are present (see tunelab.report for what it reads).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.runtime import run_stage


def report() -> None:
    from tunelab.config import load_section
    from tunelab.report import write_report

    params = load_section("report.content")
    summary = write_report(Path("."), params)
    print(
        f"report: {len(summary['scenarios'])} scenarios ({', '.join(summary['scenarios'])}), "
        f"{summary['figures']} figures drawn, {summary['images']} images embedded, "
        f"report.html {summary['html_bytes'] / 1024:.0f} KiB"
    )


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    run_stage(report)


if __name__ == "__main__":
    main()
