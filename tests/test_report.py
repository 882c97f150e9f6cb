"""The report stage: every scenario present, markdown + self-contained HTML, checked in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.report import write_report
from tunelab.report.discover import discover
from tunelab.report.tables import cell

from .browser import find_chromium, open_page
from .conftest import ROOT, run_module, section


def _grpo_like_curves(live_dir: Path, only_loss: bool = False) -> None:
    """dvclive series named as TRL's GRPOTrainer logs them (loss, reward, each component, kl);
    with only_loss, an SFT warm-up run in a folder of its own."""
    from dvclive import Live

    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False)
    for step in range(3 if only_loss else 6):
        live.log_metric("loss", 0.5 - 0.05 * step)
        if only_loss:
            live.next_step()
            continue
        live.log_metric("reward", 0.4 * step)
        live.log_metric("rewards/correctness_reward/mean", 0.3 * step)
        live.log_metric("rewards/xml_count_reward/mean", 0.1 * step)
        live.log_metric("kl", 0.01 * step)
        live.next_step()
    live.end()


@pytest.fixture(scope="module")
def project(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with one trained + evaluated text scenario, GRPO-style curves and
    metrics for a second scenario, and an SVD demo figure + metrics for a third."""
    root = tmp_path_factory.mktemp("report") / "proj"
    shutil.copytree(tiny_run, root)
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    # The real evaluate stage: base versus tuned on the 8 held-out prompts.
    done = run_module(["stages.evaluate", "alpaca"], root, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    cwd = os.getcwd()
    os.chdir(root)  # dvclive looks for a DVC repo from the cwd: never the project's own
    try:
        _grpo_like_curves(Path("reports/train/gsm8k"))
        _grpo_like_curves(Path("reports/train/gsm8k/warmup"), only_loss=True)
    finally:
        os.chdir(cwd)
    gsm8k = root / "reports/metrics/evaluate/gsm8k.json"
    gsm8k.write_text(
        json.dumps(
            {
                "base": {"strict": 0.0, "flexible": 0.1, "answer_tag": 0.0},
                "tuned": {"strict": 0.25, "flexible": 0.3, "answer_tag": 0.5},
            }
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (root / "reports/svd").mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.semilogy([10.0, 4.0, 1.0, 0.2])
    fig.savefig(root / "reports/svd/singular_values.png")
    plt.close(fig)
    (root / "reports/metrics/svd").mkdir(parents=True)
    (root / "reports/metrics/svd/image.json").write_text(
        json.dumps(
            {
                "rank": 4,
                "ranks": {
                    "10": {"rel_error": 0.05, "psnr_db": 30.0},
                    "2": {"rel_error": 0.2, "psnr_db": 18.5},
                },
            }
        )
    )
    return root


def test_cells_escape_markup() -> None:
    text = cell("<answer>7</answer> | *x* [a](b)\nnext", max_chars=100)
    assert "<answer>" not in text and "&lt;answer&gt;" in text
    assert r"\|" in text and r"\*x\*" in text and r"\[a\]" in text and "<br>" in text
    assert cell("rows_kept") == "rows_kept"
    assert cell("x" * 50, max_chars=10) == "x" * 9 + "…"


def test_discovers_every_scenario(project: Path) -> None:
    found = discover(project)
    assert set(found) == {"alpaca", "gsm8k", "svd"}
    alpaca = found["alpaca"]
    assert alpaca.data_card and alpaca.run_card and alpaca.generations
    assert "evaluate" in alpaca.metrics and "loss" in alpaca.runs[""]
    assert "rewards/correctness_reward/mean" in found["gsm8k"].runs[""]
    assert found["svd"].images == [Path("svd/singular_values.png")]
    # reports/metrics/svd/image.json: "image" names no scenario, so it belongs to svd
    assert found["svd"].metrics["image"]["rank"] == 4
    assert set(found["alpaca"].runs) == {""} and set(found["gsm8k"].runs) == {"", "warmup"}


def test_report_markdown_and_html(project: Path) -> None:
    params = section("report.content")
    summary = write_report(project, params)
    md = (project / "reports/report.md").read_text(encoding="utf-8")
    page = (project / "reports/report.html").read_text(encoding="utf-8")
    for heading in ("## alpaca", "## gsm8k", "## svd", "### Data card", "### Run card"):
        assert heading in md, heading
    assert "| metric | base | tuned | Δ (tuned − base) |" in md
    assert "| prompt | reference | base | tuned |" in md
    assert re.search(r"\| train\.global_step \| 4 \|", md)
    assert "| strict | 0 | 0.25 | +0.25 |" in md  # the GRPO scenario's base/tuned table
    # the LoRA-variants section: one row per adapter whose run card names its variant
    assert "## LoRA variants" in md
    assert re.search(r"\| alpaca \| LoRA \| 4 \| 42 \| [0-9.]+ \| [0-9.]+ \|", md)
    # a mapping of like mappings becomes a matrix, rows in numeric order
    assert "| ranks | rel_error | psnr_db |" in md
    assert md.index("| 2 | 0.2 | 18.5 |") < md.index("| 10 | 0.05 | 30 |")
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    expected = {
        "figures/alpaca-loss.png",
        "figures/gsm8k-loss.png",
        "figures/gsm8k-reward.png",
        "figures/gsm8k-kl.png",
        "figures/gsm8k_warmup-loss.png",
        "figures/overview-loss.png",
        "svd/singular_values.png",
    }
    assert set(refs) == expected
    for ref in refs:
        assert (project / "reports" / ref).is_file(), ref
    # the reward figure holds the total and each component
    assert summary["images"] == len(expected)
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) == len(expected)
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from the network
    # same inputs, same bytes (DVC sees no change when nothing changed)
    before = {p.name: p.read_bytes() for p in (project / "reports/figures").iterdir()}
    write_report(project, params)
    assert before == {p.name: p.read_bytes() for p in (project / "reports/figures").iterdir()}
    assert (project / "reports/report.html").read_text(encoding="utf-8") == page


def test_report_renders_in_headless_chromium(project: Path, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium not installed (requirements/apt.txt; .ci/run installs it)")
    from PIL import Image

    write_report(project, section("report.content"))
    html = project / "reports/report.html"
    result = open_page(html.as_uri(), tmp_path / "chromium")
    shot = tmp_path / "report.png"
    shot.write_bytes(result.screenshot)
    assert result.title == "tunelab report"
    assert result.failed_requests == [] and result.errors == []
    assert all(url.startswith(("file:", "data:")) for url in result.requests), result.requests
    assert len(result.images) == 7
    for img in result.images:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
    image = Image.open(shot).convert("RGB")
    width, height = image.size
    assert width >= 1000 and height > 2000  # the full page, not a blank viewport
    small = image.resize((width // 4, height // 4))
    pixels = list(small.getdata())
    not_white = sum(1 for p in pixels if min(p) < 240) / len(pixels)
    assert not_white > 0.03, f"screenshot looks blank ({not_white:.1%} non-white)"
    assert len(set(pixels)) > 64  # text, tables and coloured curves, not a flat page


def test_report_stage_and_errors(project: Path, tmp_path: Path) -> None:
    done = run_module(["stages.report"], project, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 scenarios (alpaca, gsm8k, svd)" in done.stdout

    broken = tmp_path / "broken"
    (broken / "reports/metrics/evaluate").mkdir(parents=True)
    (broken / "reports/metrics/evaluate/x.json").write_text('{"base": ')
    shutil.copy(ROOT / "params.yaml", broken / "params.yaml")
    done = run_module(["stages.report"], broken, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: reports/metrics/evaluate/x.json line 1: invalid JSON (Expecting value)"
    ]
    assert not (broken / "reports/report.md").exists()
    assert not (broken / "reports/report.html").exists()
    with pytest.raises(TunelabError, match="not a dvclive series"):
        bad = tmp_path / "bad"
        (bad / "reports/train/x/plots/metrics").mkdir(parents=True)
        (bad / "reports/train/x/plots/metrics/loss.tsv").write_text("a\tb\n1\t2\n")
        discover(bad)


def test_empty_project_gives_a_report_that_says_so(tmp_path: Path) -> None:
    summary = write_report(tmp_path, section("report.content"))
    assert summary["scenarios"] == []
    assert "No scenario outputs found" in (tmp_path / "reports/report.md").read_text()
    assert (tmp_path / "reports/report.html").is_file()


def test_pretrain_and_preference_sections(tmp_path: Path) -> None:
    """The sections built from pretrain@, pretrain_sft@ and evaluate_pref@ metrics files."""
    from tunelab.report import build_markdown

    def put(rel: str, obj: dict) -> None:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(obj))

    put(
        "reports/metrics/pretrain/medical.json",
        {
            "base": {"perplexity": 900.0, "val_loss": 6.8},
            "tuned": {"perplexity": 40.0, "val_loss": 3.7},
            "documents": 20,
            "train_documents": 113,
        },
    )
    put(
        "reports/metrics/pretrain_sft/medical.json",
        {
            "without_pretraining": {"val_loss": 0.43, "rougeL": 32.2},
            "with_pretraining": {"val_loss": 0.40, "rougeL": 35.0},
            "steps": 150,
        },
    )
    put("data/prepared/medical/data_card.json", {"train_rows": 10, "val_rows": 2})
    put("adapters/orpo/run_card.json", {"method": "orpo", "seed": 1})
    put(
        "reports/metrics/evaluate_pref/orpo.json",
        {
            "base": {"pref_accuracy": 20.0, "logp_margin": -5.0, "rougeL": 0.0, "chrf": 7.0},
            "tuned": {"pref_accuracy": 90.0, "logp_margin": 9.5, "rougeL": 60.0, "chrf": 40.0},
        },
    )
    md, _ = build_markdown(discover(tmp_path), section("report.content"))
    assert "## Continual pretraining" in md and "## Preference optimization" in md
    assert "| [medical](#medical) | 113 | 20 | 900 → 40 (-860) | 6.8 → 3.7 (-3.1) |" in md
    assert "| medical | 150 | 0.43 → 0.4 (-0.03) | 32.2 → 35 (+2.8) |" in md
    assert "| [orpo](#orpo) | orpo | 20 → 90 (+70) | -5 → 9.5 (+14.5) | – |" in md
    assert md.index("## Continual pretraining") < md.index('<a id="medical">')
