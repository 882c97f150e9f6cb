"""Truncated SVD: image compression, and the spectrum of the updates LoRA learns.

Image. Each colour channel X_c (h x w, values in [0, 1]) is factorised
X_c = U S Vᵀ (LAPACK through numpy, float64) and truncated to its top k singular
triplets. Storing rank k costs k(h + w + 1) numbers per channel instead of h·w,
so the compression ratio is h·w / (k(h + w + 1)). By the Eckart–Young–Mirsky
theorem the truncation is the best rank-k approximation in Frobenius norm and
its error is sqrt(Σ_{i>k} s_i²); ``rank_sweep`` measures the error of the image
it actually rebuilds and ``check_eckart_young`` compares it with that optimum.
Simplified: the ratio counts stored numbers, not bytes (no quantisation or
entropy coding); channels are factorised independently in RGB; PSNR is taken on
the unclipped reconstruction with data range 1.

LoRA. For a target linear layer with base weight W (out x in) an adapter stores
A (r x in) and B (out x r); the layer adds ΔW = s·B·A with s = alpha/r
(alpha/sqrt(r) for rsLoRA), the same definition as PEFT's ``get_delta_weight``.
``lora_spectra`` reads the adapter's safetensors and the matching base weights,
and compares the singular values of ΔW (rank at most r) with those of W, the
energy (share of Σs²) captured by the top-k directions, and the LoRA paper's
amplification factor ‖ΔW‖_F / ‖UᵀWV‖_F (U, V: ΔW's top-r singular vectors).
A DoRA adapter also stores a magnitude m per output row; its layer computes
m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row, so its ΔW is that minus W (PEFT's merge), a
row rescaling of W on top of the low-rank part: not of rank r in general, so its
spectrum always comes from a full SVD of ΔW, whatever ``method`` says.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError

SKIMAGE_PREFIX = "skimage.data."

# --------------------------------------------------------------------------- image


def load_image(spec: str) -> np.ndarray:
    """An image as float64 h x w x c in [0, 1]: ``skimage.data.<name>`` or a file path."""
    from skimage.util import img_as_float64

    if spec.startswith(SKIMAGE_PREFIX):
        import skimage.data

        name = spec[len(SKIMAGE_PREFIX) :]
        func = getattr(skimage.data, name, None)
        if not callable(func) or name.startswith("_"):
            raise TunelabError(spec, "no such image function in skimage.data")
        raw = func()
    else:
        path = Path(spec)
        if not path.is_file():
            raise TunelabError(spec, "image file not found")
        from skimage.io import imread

        try:
            raw = imread(path)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad input file
            raise TunelabError(spec, f"cannot read the image ({err})") from None
    if not isinstance(raw, np.ndarray) or raw.ndim not in (2, 3):
        raise TunelabError(spec, "not a 2-D grey or colour image")
    image = img_as_float64(raw)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 4:
        image = image[..., :3]  # alpha is not part of the picture
    if image.shape[2] not in (1, 3):
        raise TunelabError(spec, f"expected 1, 3 or 4 channels, got {image.shape[2]}")
    return image


def channel_svd(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched SVD of every channel: U (c,h,m), S (c,m), Vt (c,m,w), m = min(h, w)."""
    return np.linalg.svd(np.moveaxis(image, 2, 0), full_matrices=False)


def reconstruct(u: np.ndarray, s: np.ndarray, vt: np.ndarray, k: int) -> np.ndarray:
    """The rank-k truncation of every channel, as h x w x c."""
    return np.moveaxis((u[:, :, :k] * s[:, None, :k]) @ vt[:, :k, :], 0, 2)


def compression_ratio(height: int, width: int, rank: int) -> float:
    """Numbers stored by the full channel over those stored by its rank-k factors."""
    return height * width / (rank * (height + width + 1))


def eckart_young_error(s: np.ndarray, k: int) -> float:
    """Frobenius error of the best rank-k approximation: sqrt(discarded Σs², all channels)."""
    return float(np.sqrt(np.sum(s[:, k:] ** 2)))


def rank_sweep(
    image: np.ndarray, ranks: list[int], svd: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> list[dict[str, float]]:
    """Compression ratio, relative error, its Eckart–Young optimum, PSNR and energy per rank.

    ``svd`` is ``channel_svd(image)``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    height, width, _ = image.shape
    u, s, vt = svd
    full_rank = s.shape[1]
    norm = float(np.linalg.norm(image))
    total_energy = float(np.sum(s**2))
    rows = []
    for k in ranks:
        if k > full_rank:
            raise TunelabError(
                "lowrank.svd.ranks", f"rank {k} exceeds the image's full rank {full_rank}"
            )
        approx = reconstruct(u, s, vt, k)
        error = float(np.linalg.norm(image - approx))
        optimum = eckart_young_error(s, k)
        rows.append(
            {
                "rank": k,
                "compression_ratio": compression_ratio(height, width, k),
                "rel_error": error / norm,
                "eckart_young_rel_error": optimum / norm,
                "eckart_young_gap": abs(error - optimum) / norm,
                "psnr_db": float(peak_signal_noise_ratio(image, approx, data_range=1.0)),
                "energy": float(np.sum(s[:, :k] ** 2)) / total_energy,
            }
        )
    return rows


def check_eckart_young(rows: list[dict[str, float]], tolerance: float) -> None:
    """Stop if any measured error differs from the optimum by more than tolerance·‖X‖_F."""
    for row in rows:
        if row["eckart_young_gap"] > tolerance:
            raise TunelabError(
                f"rank {row['rank']}",
                f"reconstruction error {row['rel_error']:.3e} differs from the Eckart–Young "
                f"optimum {row['eckart_young_rel_error']:.3e} by {row['eckart_young_gap']:.1e} "
                f"(> lowrank.svd.tolerance {tolerance:.1e})",
            )


# ---------------------------------------------------------------------------- LoRA

_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(\.[^.]+)?\.weight$")
_MAGNITUDE_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.lora_magnitude_vector(\.[^.]+)?(\.weight)?$"
)
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class LoraUpdate:
    """One target module's update ΔW = scaling · B @ A (float64), or DoRA's (see delta)."""

    module: str  # the base model's module path, e.g. model.layers.0.self_attn.q_proj
    layer: int | None
    kind: str  # the module's last name, e.g. q_proj
    r: int
    scaling: float
    a: Any = field(repr=False)  # torch.Tensor (r x in)
    b: Any = field(repr=False)  # torch.Tensor (out x r)
    fan_in_fan_out: bool = False
    magnitude: Any = field(default=None, repr=False)  # DoRA's m (out,), else None

    def delta(self, w: Any = None) -> Any:
        """ΔW in the base weight's layout; DoRA's needs the base weight ``w``."""
        import torch

        device = w.device if w is not None else self.a.device
        dw = self.scaling * (self.b.to(device) @ self.a.to(device))  # out x in
        if self.magnitude is not None:
            if w is None:
                raise ValueError(f"{self.module}: a DoRA update needs the base weight")
            w_oi = (w.T if self.fan_in_fan_out else w).to(dw)
            if w_oi.shape != dw.shape:
                raise TunelabError(
                    self.module, f"ΔW shape {tuple(dw.shape)} != base weight {tuple(w_oi.shape)}"
                )
            merged = w_oi + dw  # PEFT's merge: m / ||W + sBA||_row, times W + sBA
            norm = torch.linalg.norm(merged, dim=1)
            dw = (self.magnitude.to(dw) / norm)[:, None] * merged - w_oi
        return dw.T if self.fan_in_fan_out else dw


def read_lora(adapter_dir: Path) -> list[LoraUpdate]:
    """Every LoRA update of a saved PEFT adapter (safetensors), in module order."""
    import torch
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise TunelabError(
            str(adapter_dir),
            "not a LoRA adapter (adapter_config.json and adapter_model.safetensors expected)",
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise TunelabError(str(config_path), f"peft_type {config.get('peft_type')!r} is not LORA")
    dora = bool(config.get("use_dora"))
    pairs: dict[str, dict[str, Any]] = {}
    try:
        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                m = _LORA_KEY.match(key)
                if m:
                    tensor = fh.get_tensor(key).to(torch.float64)
                    pairs.setdefault(m["module"], {})[m["ab"]] = tensor
                m = _MAGNITUDE_KEY.match(key)
                if m and dora:
                    tensor = fh.get_tensor(key).to(torch.float64)
                    pairs.setdefault(m["module"], {})["m"] = tensor
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise TunelabError(str(weights), f"corrupt adapter weights ({err})") from None
    updates = []
    alpha_pattern = config.get("alpha_pattern") or {}
    for module in sorted(pairs, key=_module_order):
        ab = pairs[module]
        if set(ab) != ({"A", "B", "m"} if dora else {"A", "B"}):
            what = "lora_A, lora_B or DoRA's lora_magnitude_vector" if dora else "lora_A or lora_B"
            raise TunelabError(str(weights), f"{module}: {what} is missing")
        r = int(ab["A"].shape[0])
        if ab["B"].shape[1] != r:
            raise TunelabError(str(weights), f"{module}: lora_B has {ab['B'].shape[1]} != r={r}")
        alpha = config["lora_alpha"]
        if alpha_pattern:
            from peft.utils.other import get_pattern_key  # slow import: only when needed

            key = get_pattern_key(list(alpha_pattern), module)
            alpha = alpha_pattern.get(key, alpha)
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        layer = _LAYER.search(f".{module}.")
        updates.append(
            LoraUpdate(
                module=module,
                layer=int(layer.group(1)) if layer else None,
                kind=module.rsplit(".", 1)[-1],
                r=r,
                scaling=float(scaling),
                a=ab["A"],
                b=ab["B"],
                fan_in_fan_out=bool(config.get("fan_in_fan_out")),
                magnitude=ab.get("m"),
            )
        )
    if not updates:
        raise TunelabError(str(weights), "no lora_A/lora_B weights found")
    return updates


def _module_order(module: str) -> tuple[int, str]:
    layer = _LAYER.search(f".{module}.")
    return (int(layer.group(1)) if layer else -1, module)


class BaseWeights:
    """Read single base weights lazily from a model's safetensors (local dir or hub id)."""

    def __init__(self, name_or_path: str, revision: str | None) -> None:
        from safetensors import safe_open

        folder = Path(name_or_path)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                folder = Path(
                    snapshot_download(
                        name_or_path, revision=revision, allow_patterns=["*.safetensors"]
                    )
                )
            except Exception as err:  # noqa: BLE001 - offline, unknown repo, no access
                raise TunelabError(name_or_path, f"cannot get the base weights ({err})") from None
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise TunelabError(str(folder), "no safetensors weights")
        self.where = str(name_or_path)
        self.index: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                self.index.update(dict.fromkeys(fh.keys(), f))

        self._spectra: dict[str, Any] = {}

    def get(self, module: str) -> Any:
        """The base weight of a module, float64, on the GPU when there is one."""
        import torch
        from safetensors import safe_open

        key = f"{module}.weight"
        if key not in self.index:
            raise TunelabError(self.where, f"base weight {key} not found (adapter/base mismatch?)")
        with safe_open(str(self.index[key]), framework="pt") as fh:
            return fh.get_tensor(key).to(device=_device(), dtype=torch.float64)

    def svdvals(self, module: str, w: Any, method: str) -> Any:
        """W's singular values, computed once per module and shared by every adapter.

        ``factored``: the square roots of the eigenvalues of the smaller Gram matrix
        (W Wᵀ or Wᵀ W), largest first; one matrix product and a symmetric eigensolver
        instead of an SVD. Squaring loses relative precision only on singular values far
        below the largest (irrelevant for the energy fractions reported).
        """
        import torch

        if module not in self._spectra:
            if method == "full":
                self._spectra[module] = torch.linalg.svdvals(w)
            else:
                gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
                eig = torch.linalg.eigvalsh(gram).clamp_min(0).flip(0)
                self._spectra[module] = eig.sqrt()
        return self._spectra[module]


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def factored_svd(update: LoraUpdate, device: Any) -> tuple[Any, Any, Any]:
    """The SVD of ΔW = s·B·A from its r x r core, without forming ΔW (exact).

    B = Q_b R_b and Aᵀ = Q_a R_a (thin QR), so ΔW = Q_b (s R_b R_aᵀ) Q_aᵀ and the SVD of
    the small core U_c S V_cᵀ gives ΔW's: U = Q_b U_c, S, Vᵀ = V_cᵀ Q_aᵀ. The spectrum is
    padded with zeros to min(out, in), the length a full SVD returns.
    """
    import torch

    b, a = update.b.to(device), update.a.to(device)
    if update.fan_in_fan_out:  # ΔW = (s·B·A)ᵀ = s·Aᵀ·Bᵀ
        b, a = a.T, b.T
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    uc, s_core, vch = torch.linalg.svd(update.scaling * (rb @ ra.T))
    n = min(b.shape[0], a.shape[1])
    s_dw = torch.cat([s_core, s_core.new_zeros(n - s_core.shape[0])])
    return qb @ uc, s_dw, vch @ qa.T


def module_spectrum(
    w: Any, s_w: Any, update: LoraUpdate, top_k: list[int], rank_rtol: float, method: str
) -> dict:
    """Spectra of W and ΔW, numerical rank of ΔW, top-k energies, amplification factor."""
    import torch

    shape = (update.b.shape[0], update.a.shape[1])
    shape = shape[::-1] if update.fan_in_fan_out else shape
    if tuple(shape) != tuple(w.shape):
        raise TunelabError(
            update.module, f"ΔW shape {tuple(shape)} != base weight {tuple(w.shape)}"
        )
    if method == "full" or update.magnitude is not None:  # DoRA's ΔW is not of rank r
        dw = update.delta(w)
        u, s_dw, vh = torch.linalg.svd(dw, full_matrices=False)
        dw_norm = torch.linalg.norm(dw)
    else:
        u, s_dw, vh = factored_svd(update, w.device)
        dw_norm = torch.linalg.norm(s_dw)  # = ||ΔW||_F
    full = min(w.shape)
    if max(top_k) > full:
        raise TunelabError(
            "lowrank.svd.lora.top_k", f"k={max(top_k)} exceeds {update.module}'s {full}"
        )
    rank_dw = int((s_dw > rank_rtol * s_dw[0]).sum()) if s_dw[0] > 0 else 0
    e_w = torch.cumsum(s_w**2, 0) / torch.sum(s_w**2)
    e_dw = torch.cumsum(s_dw**2, 0) / torch.sum(s_dw**2) if s_dw[0] > 0 else torch.ones_like(s_dw)
    r = update.r
    projected = torch.linalg.norm(u[:, :r].T @ w @ vh[:r].T)
    return {
        "module": update.module,
        "layer": update.layer,
        "kind": update.kind,
        "shape": list(w.shape),
        "lora_r": r,
        "scaling": update.scaling,
        "dw_numerical_rank": rank_dw,
        "w_fro": float(torch.linalg.norm(w)),
        "dw_fro": float(dw_norm),
        "dw_over_w": float(dw_norm / torch.linalg.norm(w)),
        "amplification": float(dw_norm / projected) if projected > 0 else math.inf,
        "dw_energy_top": {str(k): float(e_dw[k - 1]) for k in top_k},
        "w_energy_top": {str(k): float(e_w[k - 1]) for k in top_k},
        "s_w": [float(f"{x:.6g}") for x in s_w.tolist()],
        "s_dw": [float(f"{x:.6g}") for x in s_dw.tolist()],
    }


def lora_spectra(
    adapter_dir: Path,
    weights: BaseWeights,
    layers: list[int] | None,
    top_k: list[int],
    rank_rtol: float,
    method: str,
) -> list[dict]:
    """module_spectrum for every LoRA module of an adapter in the selected decoder layers."""
    updates = read_lora(adapter_dir)
    if layers is not None:
        present = {u.layer for u in updates}
        missing = sorted(set(layers) - present)
        if missing:
            raise TunelabError(
                "lowrank.svd.lora.layers",
                f"layer(s) {missing} have no LoRA modules in {adapter_dir} "
                f"(layers present: {sorted(x for x in present if x is not None)})",
            )
        updates = [u for u in updates if u.layer in layers]
    out = []
    for u in updates:
        w = weights.get(u.module)
        s_w = weights.svdvals(u.module, w, method)
        out.append(module_spectrum(w, s_w, u, top_k, rank_rtol, method))
    return out


def summarise(modules: list[dict], top_k: list[int]) -> dict[str, Any]:
    """Adapter-level figures: rank bound, mean top-k energies, median ratios."""
    ranks = [m["dw_numerical_rank"] for m in modules]
    return {
        "modules": len(modules),
        "lora_r": sorted({m["lora_r"] for m in modules}),
        "dw_max_numerical_rank": max(ranks),
        "dw_rank_within_r": all(m["dw_numerical_rank"] <= m["lora_r"] for m in modules),
        "dw_energy_top_mean": {
            str(k): round(float(np.mean([m["dw_energy_top"][str(k)] for m in modules])), 6)
            for k in top_k
        },
        "w_energy_top_mean": {
            str(k): round(float(np.mean([m["w_energy_top"][str(k)] for m in modules])), 6)
            for k in top_k
        },
        "dw_over_w_median": round(float(np.median([m["dw_over_w"] for m in modules])), 6),
        "amplification_median": round(float(np.median([m["amplification"] for m in modules])), 4),
    }
