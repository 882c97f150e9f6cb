"""The report: reports/report.md and a self-contained reports/report.html.

The report knows no scenario by name. It discovers what the pipeline left on
disk and shows every scenario it finds:

- data cards        data/prepared/<scenario>/data_card.json
- training curves   reports/train/<scenario>/[<run>/]plots/metrics/**.tsv (dvclive),
                    grouped into figures by the globs in params ``report.content.curves``
                    (loss; GRPO reward and each reward component; KL)
- metric tables     reports/metrics/<stage>/<name>.json, shown under scenario <name>
                    when one of the other inputs names it, else under scenario <stage>
                    (reports/metrics/svd/image.json belongs to svd); a file with
                    ``base`` and ``tuned`` mappings becomes a base | tuned | delta table,
                    a mapping of like mappings (per rank, per scenario) a matrix
- generations       reports/generations/<scenario>.jsonl, the first rows side by side
- figures           any other PNG under reports/<dir>/ (the SVD / ALS demos), shown
                    under the scenario named by <dir>
- run cards         adapters/<scenario>/run_card.json
- LoRA variants     one row per adapter: the variant its run card names (DoRA, rsLoRA,
                    PiSSA, LoRA+, ...), held-out loss and scenario metrics, train time,
                    adapter size and the svd stage's ΔW spectrum figures; ``tunelab
                    variants`` builds the same table over experiments (tunelab.compare)

Figures are drawn with matplotlib (Agg) and written beside the markdown under
reports/figures/; the HTML is rendered from the same markdown (markdown-it-py)
with every image inlined as a base64 data URI, so viewing it needs no network
and no other file. Simplified: numbers are shown as found (no units, no
"better" arrows); long texts are cut at ``text_max_chars``.
"""

from __future__ import annotations

import base64
import html
import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from tunelab.config.outputs import ReportContentParams
from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, atomic_file
from tunelab.report.discover import Scenario, discover
from tunelab.report.figures import curve_figure, curve_groups
from tunelab.report.sections import preference_section, pretrain_section, variants_section
from tunelab.report.tables import Raw, cell, flatten, metric_table, run_card_markdown, table

TITLE = "tunelab report"
FIGURES = "figures"


def build_markdown(
    scenarios: dict[str, Scenario], params: ReportContentParams
) -> tuple[str, dict[str, bytes]]:
    """The report's markdown and the PNGs it references (path under reports/ -> bytes)."""
    figures: dict[str, bytes] = {}
    out = [f"# {TITLE}\n"]
    if not scenarios:
        out.append(
            "No scenario outputs found (no data cards, metrics, curves, generations, "
            "figures or run cards): run `dvc repro` first.\n"
        )
        return "\n".join(out), figures
    out += ["## Summary\n", summary_table(scenarios)]
    variants = variants_section(scenarios)
    if variants:
        out.append(variants)
    losses = {
        s.name: s.runs[""]["loss"] for s in scenarios.values() if "loss" in s.runs.get("", {})
    }
    if len(losses) > 1:
        figures[f"{FIGURES}/overview-loss.png"] = curve_figure(
            "training loss, all scenarios", losses, params.figure_dpi
        )
        out.append(f"![training loss, all scenarios]({FIGURES}/overview-loss.png)\n")
    out += [text for text in (pretrain_section(scenarios), preference_section(scenarios)) if text]
    for s in scenarios.values():
        out += scenario_section(s, params, figures)
    return "\n".join(out), figures


def summary_table(scenarios: dict[str, Scenario]) -> str:
    """One row a scenario: its data, steps, last loss, train time and what is shown."""
    rows = []
    for s in scenarios.values():
        train = (s.run_card or {}).get("train", {})
        present = (
            ("data card", s.data_card),
            ("curves", s.runs),
            ("metrics", s.metrics),
            ("generations", s.generations),
            ("figures", s.images),
            ("run card", s.run_card),
        )
        rows.append(
            [
                Raw(f"[{cell(s.name)}](#{s.name})"),
                (s.data_card or {}).get("train_rows"),
                (s.data_card or {}).get("val_rows"),
                train.get("global_step"),
                train.get("last_logged_loss"),
                (s.run_card or {}).get("wall_seconds"),
                ", ".join(name for name, shown in present if shown),
            ]
        )
    header = ["scenario", "train rows", "val rows", "steps", "last loss", "train s", "shown"]
    return table(header, rows)


def scenario_section(
    s: Scenario, params: ReportContentParams, figures: dict[str, bytes]
) -> list[str]:
    """A scenario's own section; its curve figures are added to ``figures``."""
    out = [f'<a id="{s.name}"></a>\n\n## {s.name}\n']
    if s.data_card:
        out += ["### Data card\n", table(["field", "value"], list(flatten(s.data_card).items()))]
    curves = []
    for run, series in sorted(s.runs.items()):
        label = f"{s.name} {run}".strip()
        for title, keys in curve_groups(series, params.curves).items():
            rel = f"{FIGURES}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', f'{label}-{title}')}.png"
            figures[rel] = curve_figure(
                f"{label}: {title}", {k: series[k] for k in keys}, params.figure_dpi
            )
            curves.append(f"![{label} {title}]({rel})\n")
    if curves:
        out += ["### Training curves\n", *curves]
    for title, metrics in sorted(s.metrics.items()):
        out += [f"### Metrics: {title}\n", metric_table(metrics)]
    if s.generations and params.examples:
        rows = s.generations[: params.examples]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        out += [
            f"### Generations ({len(rows)} of {s.generations_total}, same prompts)\n",
            table(columns, [[r.get(c, "") for c in columns] for r in rows], params.text_max_chars),
        ]
    if s.images:
        out.append("### Figures\n")
        out += [f"![{p.stem}]({p.as_posix()})\n" for p in s.images]
    if s.run_card:
        out += ["### Run card\n", run_card_markdown(s.run_card)]
    return out


def markdown_to_html(markdown: str, images: dict[str, bytes], title: str = TITLE) -> str:
    """Render the markdown and inline every image as a data URI (no other file needed)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")

    def render_image(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        src = token.attrGet("src")
        if src not in images:
            raise TunelabError(f"report image {src}", "referenced but not found")
        token.attrSet("src", "data:image/png;base64," + base64.b64encode(images[src]).decode())
        return self.image(tokens, idx, options, env)

    md.add_render_rule("image", render_image)
    body = md.render(markdown)
    template = Template(
        resources.files("tunelab").joinpath("templates/report.html").read_text(encoding="utf-8")
    )
    return template.substitute(title=html.escape(title), body=body)


def write_report(root: Path, params: ReportContentParams) -> dict[str, Any]:
    """Build reports/report.md, reports/figures/ and reports/report.html under ``root``."""
    root = Path(root)
    reports = root / "reports"
    scenarios = discover(root)
    markdown, figures = build_markdown(scenarios, params)
    images = dict(figures)
    for s in scenarios.values():
        for rel in s.images:
            images[rel.as_posix()] = (reports / rel).read_bytes()
    page = markdown_to_html(markdown, images)
    with atomic_dir(reports / FIGURES) as tmp:
        for rel, data in figures.items():
            (tmp / Path(rel).name).write_bytes(data)
    with atomic_file(reports / "report.md") as fh:
        fh.write(markdown)
    with atomic_file(reports / "report.html") as fh:
        fh.write(page)
    return {
        "scenarios": list(scenarios),
        "figures": len(figures),
        "images": len(images),
        "html_bytes": len(page.encode()),
    }
