"""Stage svd: truncated SVD of an image (Eckart–Young), then the spectra of the LoRA updates.

    python -m stages.svd

Reads params lowrank.svd, the image it names, models/base/text and the adapters
it lists. Writes reports/metrics/svd/image.json and reports/metrics/svd/lora.json
(fixed names, for `dvc metrics diff`) and reports/svd/: rank_sweep.tsv (a dvc
plot), image_reconstructions.png, image_curves.png, lora_<adapter>.png,
lora_modules.json (every module's figures and spectra) and summary.md.
"""

from __future__ import annotations

from pathlib import Path

from tunelab import provenance
from tunelab.runtime import run_stage

OUT = Path("reports/svd")
METRICS = Path("reports/metrics/svd")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def svd() -> None:
    from tunelab.config import load_section
    from tunelab.errors import TunelabError
    from tunelab.io import atomic_dir, dump_json, write_json
    from tunelab.lowrank import plots
    from tunelab.lowrank import svd as lsvd
    from tunelab.models.loading import resolve_base

    params = load_section("lowrank.svd")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(params.threads)
    with provenance.Timer() as timer, threadpool_limits(limits=params.threads):
        image = lsvd.load_image(params.image)
        decomposition = lsvd.channel_svd(image)
        rows = lsvd.rank_sweep(image, params.ranks, decomposition)
        lsvd.check_eckart_young(rows, params.tolerance)

        lp = params.lora
        for folder in [lp.base, *lp.adapters]:
            if not Path(folder).exists():
                raise TunelabError(folder, "not found: run the stage that writes it first")
        weights = lsvd.BaseWeights(*resolve_base(Path(lp.base)))
        spectra = {
            Path(a).name: lsvd.lora_spectra(
                Path(a), weights, lp.layers, lp.top_k, lp.rank_rtol, lp.method
            )
            for a in lp.adapters
        }
        if len(spectra) != len(lp.adapters):
            raise TunelabError("lowrank.svd.lora.adapters", "two adapters share a folder name")
        summaries = {name: lsvd.summarise(mods, lp.top_k) for name, mods in spectra.items()}

    h, w, c = image.shape
    image_metrics = {
        "image": params.image,
        "shape": [h, w, c],
        "eckart_young_max_gap": max(r["eckart_young_gap"] for r in rows),
        "ranks": {str(r["rank"]): {k: v for k, v in r.items() if k != "rank"} for r in rows},
    }
    with atomic_dir(OUT) as tmp:
        columns = list(rows[0])
        lines = ["\t".join(columns)] + ["\t".join(str(r[k]) for k in columns) for r in rows]
        (tmp / "rank_sweep.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        plots.image_reconstructions(
            image, decomposition, rows, params.show_ranks, tmp / "image_reconstructions.png"
        )
        plots.image_curves(rows, decomposition[1], tmp / "image_curves.png")
        for name, mods in spectra.items():
            plots.lora_spectra(name, mods, tmp / f"lora_{name}.png")
        dump_json(tmp / "lora_modules.json", spectra)
        (tmp / "summary.md").write_text(
            summary_markdown(params, image.shape, rows, summaries), encoding="utf-8"
        )
    write_json(METRICS / "image.json", image_metrics)
    write_json(METRICS / "lora.json", summaries)
    best = rows[-1]
    print(
        f"svd {params.image} {h}x{w}x{c}: rank {best['rank']} -> ratio "
        f"{best['compression_ratio']:.2f}, rel error {best['rel_error']:.4f}, PSNR "
        f"{best['psnr_db']:.1f} dB; Eckart–Young gap "
        f"<= {image_metrics['eckart_young_max_gap']:.1e}"
    )
    for name, s in summaries.items():
        k = str(max(lp.top_k))
        print(
            f"svd lora {name}: {s['modules']} modules, ΔW rank <= {s['dw_max_numerical_rank']} "
            f"(r={s['lora_r']}), top-{k} energy ΔW {s['dw_energy_top_mean'][k]:.3f} vs W "
            f"{s['w_energy_top_mean'][k]:.3f}, ||ΔW||/||W|| {s['dw_over_w_median']:.3f}"
        )
    print(f"svd: {timer.seconds:.1f}s")


def summary_markdown(params: object, shape: tuple, rows: list[dict], summaries: dict) -> str:
    """The figures of both parts as a Markdown page (linked from the report)."""
    h, w, c = shape
    out = [
        "# Low-rank approximation: SVD of an image, spectra of LoRA updates",
        "",
        f"Image `{params.image}` ({h}x{w}, {c} channels), each channel factorised by SVD and "
        "truncated to rank k. The measured error equals the Eckart–Young optimum "
        "sqrt(sum of discarded s_i^2) for every rank.",
        "",
        "| rank | compression ratio | rel. Frobenius error | Eckart–Young optimum | PSNR (dB) "
        "| energy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['rank']} | {r['compression_ratio']:.2f} | {_fmt(r['rel_error'])} | "
            f"{_fmt(r['eckart_young_rel_error'])} | {r['psnr_db']:.2f} | {r['energy']:.4f} |"
        )
    out += [
        "",
        "![reconstructions](image_reconstructions.png)",
        "",
        "![curves](image_curves.png)",
        "",
        "## LoRA updates ΔW = s·B·A against their base weights",
        "",
        "Numerical rank of ΔW (singular values above "
        f"{params.lora.rank_rtol:g} x the largest), mean share of the energy in the top-k "
        "singular directions, median ‖ΔW‖_F/‖W‖_F, and the median amplification factor "
        "‖ΔW‖_F / ‖UᵀWV‖_F (U, V: ΔW's top-r singular vectors; LoRA paper, section 7).",
        "",
    ]
    ks = [str(k) for k in params.lora.top_k]
    out.append(
        "| adapter | modules | r | max rank ΔW | "
        + " | ".join(f"top-{k} ΔW / W" for k in ks)
        + " | ‖ΔW‖/‖W‖ | amplification |"
    )
    out.append("|---" * (6 + len(ks)) + "|")
    for name, s in summaries.items():
        energies = " | ".join(
            f"{s['dw_energy_top_mean'][k]:.3f} / {s['w_energy_top_mean'][k]:.3f}" for k in ks
        )
        out.append(
            f"| {name} | {s['modules']} | {','.join(map(str, s['lora_r']))} | "
            f"{s['dw_max_numerical_rank']} | {energies} | {s['dw_over_w_median']:.4f} | "
            f"{s['amplification_median']:.2f} |"
        )
    out.append("")
    out += [f"![{name}](lora_{name}.png)\n" for name in summaries]
    return "\n".join(out)


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__).parse_args()
    run_stage(svd)


if __name__ == "__main__":
    main()
