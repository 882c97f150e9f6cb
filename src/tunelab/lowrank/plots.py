"""Figures for the low-rank demos (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunelab.lowrank.svd import reconstruct

DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)


def image_reconstructions(
    image: np.ndarray,
    svd: tuple[np.ndarray, np.ndarray, np.ndarray],
    rows: list[dict],
    show_ranks: list[int],
    path: Path,
) -> None:
    """The original next to its rank-k reconstructions (clipped to [0, 1] for display)."""
    plt = _plt()
    by_rank = {r["rank"]: r for r in rows}
    n = 1 + len(show_ranks)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6))
    grey = image.shape[2] == 1
    panels = [(image, "original")] + [
        (
            np.clip(reconstruct(*svd, k), 0, 1),
            f"rank {k}: {by_rank[k]['compression_ratio']:.1f}x smaller\n"
            f"PSNR {by_rank[k]['psnr_db']:.1f} dB",
        )
        for k in show_ranks
    ]
    for ax, (img, title) in zip(axes, panels, strict=True):
        ax.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    _save(fig, path)


def image_curves(rows: list[dict], s: np.ndarray, path: Path) -> None:
    """Error vs rank (measured and Eckart–Young), PSNR, compression ratio, spectra."""
    plt = _plt()
    ranks = [r["rank"] for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(10, 7.5))
    a = ax[0, 0]
    a.plot(ranks, [r["eckart_young_rel_error"] for r in rows], "-", lw=3, alpha=0.4,
           label="Eckart–Young optimum")  # fmt: skip
    a.plot(ranks, [r["rel_error"] for r in rows], "o", label="measured")
    a.set(xscale="log", yscale="log", xlabel="rank k", ylabel="‖X − X_k‖_F / ‖X‖_F")
    a.set_title("relative Frobenius error")
    a.legend()
    a = ax[0, 1]
    a.plot(ranks, [r["psnr_db"] for r in rows], "o-")
    a.set(xscale="log", xlabel="rank k", ylabel="PSNR (dB)", title="PSNR")
    a = ax[1, 0]
    a.plot(ranks, [r["compression_ratio"] for r in rows], "o-")
    a.axhline(1, color="grey", ls=":")
    a.set(xscale="log", yscale="log", xlabel="rank k", ylabel="h·w / (k(h+w+1))")
    a.set_title("compression ratio (stored numbers)")
    a = ax[1, 1]
    colours = ["tab:red", "tab:green", "tab:blue"] if s.shape[0] == 3 else ["k"]
    names = ["R", "G", "B"] if s.shape[0] == 3 else ["grey"]
    for c in range(s.shape[0]):
        a.plot(np.arange(1, s.shape[1] + 1), s[c], color=colours[c], label=names[c])
    a.set(xscale="log", yscale="log", xlabel="index i", ylabel="s_i", title="singular values")
    a.legend()
    _save(fig, path)


KIND_COLOURS = {
    "q_proj": "tab:blue",
    "k_proj": "tab:orange",
    "v_proj": "tab:green",
    "o_proj": "tab:red",
    "gate_proj": "tab:purple",
    "up_proj": "tab:brown",
    "down_proj": "tab:pink",
}


def lora_spectra(name: str, modules: list[dict], path: Path) -> None:
    """ΔW's spectrum (solid) against W's (dashed), and cumulative energy vs k."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    seen: set[str] = set()
    for m in modules:
        colour = KIND_COLOURS.get(m["kind"], "grey")
        label = m["kind"] if m["kind"] not in seen else None
        seen.add(m["kind"])
        s_w, s_dw = np.asarray(m["s_w"]), np.asarray(m["s_dw"])
        idx = np.arange(1, len(s_w) + 1)
        a.plot(idx, s_dw / s_dw[0], color=colour, lw=1, alpha=0.7, label=label)
        a.plot(idx, s_w / s_w[0], color=colour, lw=1, alpha=0.35, ls="--")
        b.plot(idx, np.cumsum(s_dw**2) / np.sum(s_dw**2), color=colour, lw=1, alpha=0.7)
        b.plot(idx, np.cumsum(s_w**2) / np.sum(s_w**2), color=colour, lw=1, alpha=0.35, ls="--")
    r = max(m["lora_r"] for m in modules)
    for ax in (a, b):
        ax.axvline(r, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("singular direction i (dotted: LoRA r)")
    a.set(yscale="log", ylim=(1e-18, 2), ylabel="s_i / s_1")
    a.set_title(f"{name}: ΔW = s·B·A (solid) vs base W (dashed)")
    a.legend(fontsize=7, ncol=2)
    b.set(ylabel="energy in top-k  (Σ_{i≤k} s_i² / Σ s_i²)", ylim=(0, 1.02))
    b.set_title(f"{name}: energy captured by the top-k directions")
    _save(fig, path)


def als_convergence(
    history: list[dict], baseline: list[dict], constants: dict[str, float], title: str, path: Path
) -> None:
    """Test RMSE per iteration for ALS and the biases-only baseline; flat reference lines."""
    plt = _plt()
    its = [h["iteration"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(its, [h["test_rmse"] for h in history], "o-", label="ALS test")
    a.plot(its, [h["train_rmse"] for h in history], ".-", alpha=0.6, label="ALS train")
    a.plot(
        [h["iteration"] for h in baseline],
        [h["test_rmse"] for h in baseline],
        "s--",
        alpha=0.7,
        label="biases only, test",
    )
    styles = iter([":", "-.", "--"])
    for label, value in constants.items():
        a.axhline(value, color="grey", ls=next(styles), label=f"{label} ({value:.3f})")
    a.set(xlabel="iteration", ylabel="RMSE", title=title)
    a.legend(fontsize=8)
    b.plot(its, [h["objective"] for h in history], "o-")
    b.set(xlabel="iteration", ylabel="regularised squared loss", yscale="log")
    b.set_title("ALS objective (never increases)")
    _save(fig, path)


def als_recovery(true: np.ndarray, fitted: np.ndarray, path: Path) -> None:
    """Fitted against planted noise-free ratings on a sample of user x item pairs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.scatter(true, fitted, s=2, alpha=0.3)
    lo, hi = float(min(true.min(), fitted.min())), float(max(true.max(), fitted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="planted signal", ylabel="ALS prediction (unclipped)")
    ax.set_title("recovery on all user x item pairs (sample)")
    _save(fig, path)
