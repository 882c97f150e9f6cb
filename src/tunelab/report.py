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
import csv
import fnmatch
import html
import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from tunelab.config import ReportContentParams
from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, atomic_file, read_jsonl

TITLE = "tunelab report"
# Directories under reports/ whose layout the report reads explicitly; PNGs in any
# other reports/<dir>/ are figures of the scenario <dir>.
KNOWN_DIRS = {"metrics", "train", "generations", "figures"}
FIGURES = "figures"


Series = tuple[list[float], list[float]]


@dataclass
class Scenario:
    name: str
    data_card: dict[str, Any] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # title -> metrics
    # run ("" for the scenario's own training, else e.g. "warmup") -> series name -> (x, y)
    runs: dict[str, dict[str, Series]] = field(default_factory=dict)
    generations: list[dict[str, Any]] = field(default_factory=list)
    generations_total: int = 0
    run_card: dict[str, Any] | None = None
    images: list[Path] = field(default_factory=list)  # relative to the reports dir


# ---------------------------------------------------------------------- discovery


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TunelabError(f"{path} line {err.lineno}", f"invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise TunelabError(str(path), "expected a JSON object")
    return data


def _read_tsv(path: Path) -> Series:
    """A dvclive series: a ``step`` column and the value in the last column."""
    steps, values = [], []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if not header or "step" not in header:
            raise TunelabError(str(path), "not a dvclive series (no 'step' column)")
        col = header.index("step")
        for i, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                steps.append(float(row[col]))
                values.append(float(row[-1]))
            except (ValueError, IndexError):
                raise TunelabError(f"{path} line {i}", f"not a number: {row!r}") from None
    return steps, values


def discover(root: Path) -> dict[str, Scenario]:
    """Every scenario that has at least one of the report's inputs under ``root``."""
    root = Path(root)
    reports = root / "reports"
    found: dict[str, Scenario] = {}

    def get(name: str) -> Scenario:
        return found.setdefault(name, Scenario(name))

    for card in sorted(root.glob("data/prepared/*/data_card.json")):
        get(card.parent.name).data_card = _read_json(card)
    for plots in sorted(reports.glob("train/*/**/plots/metrics")):
        parts = plots.relative_to(reports / "train").parts
        run = "/".join(parts[1:-2])
        series = get(parts[0]).runs.setdefault(run, {})
        for tsv in sorted(plots.rglob("*.tsv")):
            series[tsv.relative_to(plots).with_suffix("").as_posix()] = _read_tsv(tsv)
    for gen in sorted(reports.glob("generations/*.jsonl")):
        rows = read_jsonl(gen)
        scenario = get(gen.stem)
        scenario.generations, scenario.generations_total = rows, len(rows)
    for card in sorted(root.glob("adapters/*/run_card.json")):
        get(card.parent.name).run_card = _read_json(card)
    named = set(found)  # scenarios named by data, curves, generations or adapters
    for metrics in sorted(reports.glob("metrics/*/*.json")):
        stage, name = metrics.parent.name, metrics.stem
        if name in named:
            get(name).metrics[stage] = _read_json(metrics)
        else:
            get(stage).metrics[name] = _read_json(metrics)
    for png in sorted(reports.glob("*/**/*.png")):
        rel = png.relative_to(reports)
        if rel.parts[0] in KNOWN_DIRS:
            continue
        get(rel.parts[0]).images.append(rel)
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------- markdown


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "–"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


# Markdown punctuation that could format a cell; "_" only where it could open or close
# emphasis (not inside words, so that keys like rows_kept stay readable in the .md).
_MD_SPECIAL = re.compile(r"([\\`*\[\]#!|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


class Raw(str):
    """Markdown that a table cell takes as it is (a link the report itself wrote)."""


def cell(value: Any, max_chars: int | None = None) -> str:
    """Text safe inside a markdown table cell (GitHub and markdown-it alike)."""
    if isinstance(value, Raw):
        return str(value)
    text = value if isinstance(value, str) else _num(value)
    if isinstance(value, list | tuple):
        text = ", ".join(_num(v) for v in value)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    text = html.escape(text, quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\r", "").replace("\n", "<br>")


def table(header: list[str], rows: list[list[Any]], max_chars: int | None = None) -> str:
    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v, max_chars) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; lists of scalars stay one value."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out |= flatten(value, f"{prefix}{key}.")
    else:
        out[prefix.rstrip(".")] = obj
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _key_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def matrix(value: Any) -> tuple[list[str], list[str], dict[str, dict[str, Any]]] | None:
    """A mapping of two or more mappings with the same (flattened) keys, as rows x columns."""
    if not isinstance(value, dict) or len(value) < 2:
        return None
    if not all(isinstance(v, dict) for v in value.values()):
        return None
    flat = {str(k): flatten(v) for k, v in value.items()}
    columns = list(next(iter(flat.values())))
    if not columns or any(list(v) != columns for v in flat.values()):
        return None
    return sorted(flat, key=_key_order), columns, flat


def _matrix_table(name: str, rows: list[str], columns: list[str], flat: dict) -> str:
    if len(columns) > len(rows) + 2:  # wide: one row per metric instead
        return table([name or "metric", *rows], [[c, *(flat[r][c] for r in rows)] for c in columns])
    return table([name or "", *columns], [[r, *(flat[r][c] for c in columns)] for r in rows])


def metric_table(metrics: dict[str, Any]) -> str:
    """base | tuned | delta when the file compares two models; a matrix for a mapping of
    like mappings (per rank, per scenario); key | value for the rest."""
    if isinstance(metrics.get("base"), dict) and isinstance(metrics.get("tuned"), dict):
        base, tuned = flatten(metrics["base"]), flatten(metrics["tuned"])
        rows = []
        for key in list(base) + [k for k in tuned if k not in base]:
            b, t = base.get(key), tuned.get(key)
            delta = round(t - b, 6) if _is_number(b) and _is_number(t) else None
            rows.append([key, b, t, f"{delta:+.4g}" if delta is not None else "–"])
        rest = {
            k: v
            for k, v in flatten(
                {k: v for k, v in metrics.items() if k not in ("base", "tuned")}
            ).items()
            if not k.startswith("delta.")
        }
        text = table(["metric", "base", "tuned", "Δ (tuned − base)"], rows)
        if rest:
            text += "\n" + ", ".join(f"{k}: {_num(v)}" for k, v in rest.items()) + "\n"
        return text
    whole = matrix(metrics)
    if whole:
        return _matrix_table("", *whole)
    parts, rest = [], {}
    for key, value in metrics.items():
        found = matrix(value)
        if found:
            parts.append(_matrix_table(str(key), *found))
        else:
            rest |= flatten(value, f"{key}.")
    text = table(["metric", "value"], [[k, v] for k, v in rest.items()]) if rest else ""
    return "\n".join([text, *parts]) if text else "\n".join(parts)


def _short(key: str, value: Any) -> Any:
    if isinstance(value, str) and (key.endswith("sha256") or key.endswith("commit")):
        return value[:12]
    return value


def run_card_markdown(card: dict[str, Any]) -> str:
    params = card.get("params")
    shown = {k: v for k, v in card.items() if k not in ("params", "libraries")}
    rows = [[k, _short(k, v)] for k, v in flatten(shown).items()]
    libraries = card.get("libraries") or {}
    if libraries:
        rows.append(["libraries", ", ".join(f"{k} {v}" for k, v in sorted(libraries.items()))])
    text = table(["field", "value"], rows)
    if isinstance(params, dict):
        section = card.get("params_section", "params")
        text += (
            f"\n<details><summary>params ({html.escape(str(section))})</summary>\n\n"
            + table(["key", "value"], [[k, v] for k, v in flatten(params).items()])
            + "\n</details>\n"
        )
    return text


# ------------------------------------------------------------------------ figures


def _curve_groups(series: dict[str, Series], curves: dict[str, list[str]]) -> dict[str, list[str]]:
    """Figure title -> the series keys its globs match (each series in one figure)."""
    groups: dict[str, list[str]] = {}
    taken: set[str] = set()
    for title, globs in curves.items():
        keys = [
            k for k in series if k not in taken and any(fnmatch.fnmatchcase(k, g) for g in globs)
        ]
        if keys:
            groups[title] = keys
            taken.update(keys)
    return groups


def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def curve_figure(title: str, series: dict[str, Series], dpi: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, (steps, values) in series.items():
        ax.plot(steps, values, marker="." if len(steps) < 40 else None, label=name)
    ax.set_title(title)
    ax.set_xlabel("step (dvclive)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = _png(fig, dpi)
    plt.close(fig)
    return data


# ------------------------------------------------- continual pretraining, preference


def _arrow(metrics: dict[str, Any], key: str, before: str = "base", after: str = "tuned") -> str:
    b, a = metrics.get(before, {}).get(key), metrics.get(after, {}).get(key)
    if not (_is_number(b) and _is_number(a)):
        return "–"
    return f"{_num(b)} → {_num(a)} ({a - b:+.4g})"


def pretrain_section(scenarios: dict[str, Scenario]) -> str:
    """Held-out perplexity base -> pretrained (reports/metrics/pretrain/<s>.json) and the
    scenario's SFT metrics without -> with pretraining (reports/metrics/pretrain_sft/<s>.json)."""
    found = {n: s.metrics for n, s in scenarios.items() if "pretrain" in s.metrics}
    if not found:
        return ""
    rows = [
        [
            Raw(f"[{cell(n)}](#{n})"),
            m["pretrain"].get("train_documents"),
            m["pretrain"].get("documents"),
            _arrow(m["pretrain"], "perplexity"),
            _arrow(m["pretrain"], "val_loss"),
        ]
        for n, m in found.items()
    ]
    out = [
        "## Continual pretraining\n",
        "Held-out domain text (documents never trained on; none quotes the SFT held-out "
        "set), base (adapter disabled) → after pretrain@<scenario>:\n",
        table(["scenario", "train docs", "held-out docs", "perplexity", "loss"], rows),
    ]
    sft = {n: m["pretrain_sft"] for n, m in found.items() if "pretrain_sft" in m}
    if sft:
        keys = list(dict.fromkeys(k for m in sft.values() for k in m["with_pretraining"]))
        out += [
            "SFT without → with pretraining: train@ / evaluate@<scenario> against "
            "pretrain_sft@<scenario> (same params, steps, seed, held-out prompts):\n",
            table(
                ["scenario", "steps", *keys],
                [
                    [n, m.get("steps")]
                    + [_arrow(m, k, "without_pretraining", "with_pretraining") for k in keys]
                    for n, m in sft.items()
                ],
            ),
        ]
    return "\n".join(out)


def preference_section(scenarios: dict[str, Scenario]) -> str:
    """Preference accuracy, log-prob margin and generation scores, base -> tuned, per run."""
    found = {n: s for n, s in scenarios.items() if "evaluate_pref" in s.metrics}
    if not found:
        return ""
    keys = ["pref_accuracy", "logp_margin", "pref_accuracy_per_token", "rougeL", "chrf"]
    rows = [
        [Raw(f"[{cell(n)}](#{n})"), (s.run_card or {}).get("method", "–")]
        + [_arrow(s.metrics["evaluate_pref"], k) for k in keys]
        for n, s in found.items()
    ]
    return "\n".join(
        [
            "## Preference optimization\n",
            "Held-out pairs, base → tuned: % of pairs where log p(chosen) > log p(rejected) "
            "(summed, and per token), the mean log-probability margin (nats), and the "
            "generations scored against the chosen answers:\n",
            table(["run", "method", *keys], rows),
        ]
    )


# ------------------------------------------------------------------------- build


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

    summary = []
    for s in scenarios.values():
        train = (s.run_card or {}).get("train", {})
        parts = [
            name
            for name, present in (
                ("data card", s.data_card),
                ("curves", s.runs),
                ("metrics", s.metrics),
                ("generations", s.generations),
                ("figures", s.images),
                ("run card", s.run_card),
            )
            if present
        ]
        summary.append(
            [
                Raw(f"[{cell(s.name)}](#{s.name})"),
                (s.data_card or {}).get("train_rows"),
                (s.data_card or {}).get("val_rows"),
                train.get("global_step"),
                train.get("last_logged_loss"),
                (s.run_card or {}).get("wall_seconds"),
                ", ".join(parts),
            ]
        )
    header = ["scenario", "train rows", "val rows", "steps", "last loss", "train s", "shown"]
    out += ["## Summary\n", table(header, summary)]
    variants = _variants_section(scenarios)
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
        out.append(f'<a id="{s.name}"></a>\n\n## {s.name}\n')
        if s.data_card:
            out += [
                "### Data card\n",
                table(["field", "value"], list(flatten(s.data_card).items())),
            ]
        curves = []
        for run, series in sorted(s.runs.items()):
            label = f"{s.name} {run}".strip()
            for title, keys in _curve_groups(series, params.curves).items():
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
                table(
                    columns, [[r.get(c, "") for c in columns] for r in rows], params.text_max_chars
                ),
            ]
        if s.images:
            out.append("### Figures\n")
            out += [f"![{p.stem}]({p.as_posix()})\n" for p in s.images]
        if s.run_card:
            out += ["### Run card\n", run_card_markdown(s.run_card)]
    return "\n".join(out), figures


# ------------------------------------------------------------------ LoRA variants


def variant_row(
    name: str,
    run_card: dict[str, Any] | None,
    evaluate: dict[str, Any] | None,
    spectrum: dict[str, Any] | None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the variants table from what a run left (any part may be missing).

    ``params``: the train section, for runs whose card has no ``lora_variant``.
    """
    from tunelab.training.variants import variant_label

    card = run_card or {}
    variant = card.get("lora_variant") or {}
    label = variant.get("label")
    if label is None and params:
        lora, optim = params.get("lora", {}), params.get("optim", {})
        label = variant_label(
            bool(lora.get("use_dora")),
            bool(lora.get("use_rslora")),
            str(lora.get("init", "default")),
            optim.get("loraplus_lr_ratio"),
        )
    row: dict[str, Any] = {
        "run": name,
        "variant": label,
        "steps": (card.get("train") or card.get("grpo") or {}).get("global_step"),
        "seed": card.get("seed"),
    }
    tuned = (evaluate or {}).get("tuned") or {}
    base = (evaluate or {}).get("base") or {}
    if "val_loss" in tuned:
        row["held-out loss"] = tuned["val_loss"]
        row["base loss"] = base.get("val_loss")
    row |= {k: v for k, v in flatten(tuned).items() if k not in ("val_loss", "perplexity")}
    row["train s"] = card.get("wall_seconds")
    if variant.get("adapter_bytes") is not None:
        row["adapter MB"] = round(variant["adapter_bytes"] / 1e6, 3)
        row["saved r"] = variant.get("saved_r")
        row["trainable"] = variant.get("trainable_parameters")
    if spectrum:
        top = max((str(k) for k in spectrum.get("dw_energy_top_mean", {})), key=int, default=None)
        row["ΔW rank"] = spectrum.get("dw_max_numerical_rank")
        if top is not None:
            row[f"ΔW top-{top} energy"] = spectrum["dw_energy_top_mean"][top]
        row["‖ΔW‖/‖W‖"] = spectrum.get("dw_over_w_median")
        row["amplification"] = spectrum.get("amplification_median")
    return row


def variants_table(rows: list[dict[str, Any]]) -> str:
    """The rows as one markdown table (columns: the union, in first-seen order)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return table(columns, [[r.get(c) for c in columns] for r in rows])


VARIANTS_NOTE = (
    "Per adapter: the LoRA variant, held-out loss and the scenario's generation scores "
    "(tuned model), train wall time, saved adapter size and rank (PiSSA/OLoRA adapters are "
    "saved converted to a plain LoRA of rank 2r for the original base), and from the svd "
    "stage the numerical rank of ΔW, the energy share of its top-k directions, the median "
    "‖ΔW‖/‖W‖ and the amplification factor. Compare variants across experiments with "
    "`tunelab variants SCENARIO` (README: LoRA variants).\n"
)


def _variants_section(scenarios: dict[str, Scenario]) -> str:
    svd = (scenarios.get("svd") or Scenario("svd")).metrics.get("lora") or {}
    rows = [
        variant_row(s.name, s.run_card, s.metrics.get("evaluate"), svd.get(s.name))
        for s in scenarios.values()
        if s.run_card and "lora_variant" in s.run_card
    ]
    if not rows:
        return ""
    return "## LoRA variants\n\n" + VARIANTS_NOTE + "\n" + variants_table(rows)


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
