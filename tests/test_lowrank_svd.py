"""Truncated SVD: Eckart–Young on a real photograph, compression maths, LoRA update spectra."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tunelab.errors import TunelabError
from tunelab.lowrank import svd as lsvd

from .conftest import ROOT, params_dict, run_module, section


@pytest.fixture(autouse=True)
def one_blas_thread() -> Iterator[None]:
    """Small matrices: one BLAS thread, as the stage runs them (params lowrank.svd.threads)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return lsvd.load_image("skimage.data.chelsea")  # 300 x 451 x 3, ships with scikit-image


def test_error_equals_the_eckart_young_optimum(photo: np.ndarray) -> None:
    ranks = [1, 3, 10, 40, 150, 300]
    decomposition = lsvd.channel_svd(photo)
    rows = lsvd.rank_sweep(photo, ranks, decomposition)
    norm = np.linalg.norm(photo)
    # the optimum computed independently, channel by channel, from numpy's singular values
    s = [np.linalg.svd(photo[..., c], compute_uv=False) for c in range(3)]
    for row in rows:
        k = row["rank"]
        optimum = np.sqrt(sum(np.sum(sc[k:] ** 2) for sc in s)) / norm
        assert row["eckart_young_rel_error"] == pytest.approx(optimum, rel=1e-12, abs=1e-15)
        assert abs(row["rel_error"] - optimum) < 1e-10
        # any other rank-k approximation is worse: keep k singular triplets other than the top k
        u, sv, vt = decomposition
        other = np.moveaxis((u[:, :, 1 : k + 1] * sv[:, None, 1 : k + 1]) @ vt[:, 1 : k + 1], 0, 2)
        assert np.linalg.norm(photo - other) / norm > row["rel_error"]
    errors = [r["rel_error"] for r in rows]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-12  # rank 300 is full
    assert rows[-1]["psnr_db"] > 200 and rows[0]["psnr_db"] < 20
    lsvd.check_eckart_young(rows, 1e-10)
    tampered = [dict(rows[2], eckart_young_gap=1e-3)]
    with pytest.raises(TunelabError, match="rank 10: reconstruction error .* Eckart–Young"):
        lsvd.check_eckart_young(tampered, 1e-10)


def test_compression_ratio_counts_the_stored_factors(photo: np.ndarray) -> None:
    h, w, c = photo.shape
    u, s, vt = lsvd.channel_svd(photo)
    for k in (1, 7, 120):
        stored = u[:, :, :k].size + s[:, :k].size + vt[:, :k, :].size
        assert stored == c * k * (h + w + 1)
        assert lsvd.compression_ratio(h, w, k) == pytest.approx(photo.size / stored)
    assert lsvd.compression_ratio(512, 512, 1) == pytest.approx(262144 / 1025)
    assert lsvd.compression_ratio(512, 512, 256) < 1  # past (h w)/(h + w + 1) it stops paying
    with pytest.raises(TunelabError, match="lowrank.svd.ranks: rank 301 exceeds"):
        lsvd.rank_sweep(photo, [301], (u, s, vt))


def test_image_from_a_file_and_bad_image_specs(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    Image.fromarray(rgba).save(tmp_path / "red.png")
    img = lsvd.load_image(str(tmp_path / "red.png"))
    assert img.shape == (20, 30, 3) and img[..., 0].max() == 1.0 and img[..., 1].max() == 0.0
    Image.fromarray(np.arange(600, dtype=np.uint8).reshape(20, 30)).save(tmp_path / "grey.png")
    assert lsvd.load_image(str(tmp_path / "grey.png")).shape == (20, 30, 1)
    with pytest.raises(TunelabError, match="no such image function"):
        lsvd.load_image("skimage.data.no_such_picture")
    with pytest.raises(TunelabError, match="image file not found"):
        lsvd.load_image(str(tmp_path / "missing.png"))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(TunelabError, match="cannot read the image"):
        lsvd.load_image(str(tmp_path / "junk.png"))


def test_svd_params_validate() -> None:
    with pytest.raises(ValueError, match="show_ranks must be a subset of ranks"):
        section("lowrank.svd", show_ranks=[7])
    with pytest.raises(ValueError, match="ranks must be increasing"):
        section("lowrank.svd", ranks=[5, 1])


# ---------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small randomly initialised Qwen2 saved as safetensors (seconds, unlike tiny_base)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    out = tmp_path_factory.mktemp("base") / "text"
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def save_lora(base_dir: Path, out: Path, seed: int, **config: object) -> dict:
    """A real PEFT LoRA on ``base`` with random (nonzero) A and B; returns PEFT's ΔW per module."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,  # B is random too, so ΔW != 0
        task_type="CAUSAL_LM",
        **config,
    )
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out)
    deltas = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            deltas[name.removeprefix("base_model.model.")] = (
                module.get_delta_weight("default").detach().double()
            )
    return deltas


def test_lora_update_matches_peft_and_has_rank_at_most_r(base: Path, tmp_path: Path) -> None:
    deltas = save_lora(base, tmp_path / "a", seed=1, use_rslora=True, rank_pattern={"down_proj": 2})
    updates = lsvd.read_lora(tmp_path / "a")
    assert {u.module for u in updates} == set(deltas) and len(updates) == 3 * 4
    for u in updates:
        assert u.r == (2 if u.kind == "down_proj" else 4)
        assert u.scaling == pytest.approx(8 / np.sqrt(u.r))  # rsLoRA
        peft_delta = deltas[u.module]  # PEFT multiplies in float32, we in float64
        scale = float(peft_delta.abs().max())
        torch.testing.assert_close(u.delta(), peft_delta, rtol=1e-5, atol=1e-6 * scale)

    from tunelab.models.loading import resolve_base

    weights = lsvd.BaseWeights(*resolve_base(base))
    modules = lsvd.lora_spectra(tmp_path / "a", weights, [0, 3], [1, 2, 4], 1e-8, "full")
    assert {m["layer"] for m in modules} == {0, 3} and len(modules) == 6
    for m in modules:
        s_dw, s_w, r = np.array(m["s_dw"]), np.array(m["s_w"]), m["lora_r"]
        full = np.linalg.svd(deltas[m["module"]].numpy(), compute_uv=False)
        np.testing.assert_allclose(s_dw[:r], full[:r], rtol=1e-5)
        assert full[r:].max() < 1e-5 * full[0]  # float32 rounding noise beyond r
        assert m["dw_numerical_rank"] == r  # random A, B: exactly r
        assert s_dw[r:].max() < 1e-10 * s_dw[0]  # float64: the tail is far below rank_rtol
        assert m["dw_energy_top"][str(r)] == pytest.approx(1.0, abs=1e-12)
        assert m["w_energy_top"][str(r)] < 0.99  # the base weight is not low-rank
        assert (s_w[:-1] >= s_w[1:]).all() and len(s_w) == min(m["shape"])
    summary = lsvd.summarise(modules, [1, 2, 4])
    assert summary["dw_rank_within_r"] and summary["dw_max_numerical_rank"] == 4
    assert summary["lora_r"] == [2, 4]
    with pytest.raises(TunelabError, match=r"layer\(s\) \[9\] have no LoRA modules"):
        lsvd.lora_spectra(tmp_path / "a", weights, [9], [1], 1e-8, "full")

    # method factored (the gpu profile's): the same figures without any large SVD
    fast = lsvd.lora_spectra(
        tmp_path / "a", lsvd.BaseWeights(*resolve_base(base)), [0, 3], [1, 2, 4], 1e-8, "factored"
    )
    for m, f in zip(modules, fast, strict=True):
        assert f["module"] == m["module"] and f["dw_numerical_rank"] == m["dw_numerical_rank"]
        np.testing.assert_allclose(f["s_dw"], m["s_dw"], rtol=1e-5, atol=1e-9 * m["s_dw"][0])
        np.testing.assert_allclose(f["s_w"], m["s_w"], rtol=1e-5)
        assert len(f["s_dw"]) == len(m["s_dw"]) and f["s_dw"][f["lora_r"] :] == [0.0] * (
            len(f["s_dw"]) - f["lora_r"]
        )
        for key in ("dw_fro", "w_fro", "dw_over_w", "amplification"):
            assert f[key] == pytest.approx(m[key], rel=1e-9), key
        for k in ("1", "2", "4"):
            assert f["dw_energy_top"][k] == pytest.approx(m["dw_energy_top"][k], abs=1e-9)
            assert f["w_energy_top"][k] == pytest.approx(m["w_energy_top"][k], abs=1e-9)


def test_dora_update_is_what_peft_merges(base: Path, tmp_path: Path) -> None:
    """DoRA: ΔW = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row − W, the change PEFT's merge makes; not
    of rank r, so both methods take its full SVD."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.models.loading import resolve_base

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "down_proj"],
        init_lora_weights=False,
        use_dora=True,
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # a trained magnitude: not the norm it starts from
        for name, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))
    peft_model.save_pretrained(tmp_path / "dora")
    merged = {n: p.detach().double() for n, p in peft_model.merge_and_unload().state_dict().items()}
    weights = lsvd.BaseWeights(*resolve_base(base))
    updates = lsvd.read_lora(tmp_path / "dora")
    assert len(updates) == 8 and all(u.magnitude is not None for u in updates)
    for u in updates:
        w = weights.get(u.module)
        expect = merged[f"{u.module}.weight"] - w
        torch.testing.assert_close(u.delta(w), expect, atol=1e-6, rtol=1e-4)
    full = lsvd.lora_spectra(tmp_path / "dora", weights, None, [1, 4], 1e-8, "full")
    fast = lsvd.lora_spectra(tmp_path / "dora", weights, None, [1, 4], 1e-8, "factored")
    assert [m["s_dw"] for m in full] == [m["s_dw"] for m in fast]
    assert all(m["dw_numerical_rank"] > m["lora_r"] for m in full)


def test_broken_adapters_are_refused(base: Path, tmp_path: Path) -> None:
    save_lora(base, tmp_path / "dora", seed=2, use_dora=True)
    with pytest.raises(TunelabError, match="not a LoRA adapter"):
        lsvd.read_lora(tmp_path)
    shutil.copytree(tmp_path / "dora", tmp_path / "bad")
    cfg = json.loads((tmp_path / "bad" / "adapter_config.json").read_text())
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps(cfg | {"use_dora": False}))
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TunelabError, match="corrupt adapter weights"):
        lsvd.read_lora(tmp_path / "bad")


def stage_dir(tmp_path: Path, base: Path, adapters: list[str]) -> Path:
    """A working folder with params.yaml, a base model and adapters for `python -m stages.svd`."""
    work = tmp_path / "work"
    (work / "models/base").mkdir(parents=True)
    shutil.copytree(base, work / "models/base/text")
    params = params_dict()
    params["lowrank"]["svd"] |= {"ranks": [1, 5, 20, 100], "show_ranks": [5, 20]}
    params["lowrank"]["svd"]["lora"] |= {"adapters": adapters, "layers": None, "top_k": [1, 4]}
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    return work


@pytest.mark.slow
def test_svd_stage_writes_metrics_plots_and_report(base: Path, tmp_path: Path) -> None:
    work = stage_dir(tmp_path, base, ["adapters/one", "adapters/two"])
    for i, name in enumerate(("one", "two")):
        save_lora(work / "models/base/text", work / "adapters" / name, seed=10 + i)
    res = run_module(["stages.svd"], cwd=work, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    image = json.loads((work / "reports/metrics/svd/image.json").read_text())
    assert image["shape"] == [512, 512, 3] and image["eckart_young_max_gap"] < 1e-10
    assert image["ranks"]["100"]["compression_ratio"] == pytest.approx(262144 / 102500)
    lora = json.loads((work / "reports/metrics/svd/lora.json").read_text())
    assert set(lora) == {"one", "two"}
    assert lora["one"]["dw_max_numerical_rank"] == 4 and lora["one"]["modules"] == 12
    assert lora["one"]["dw_energy_top_mean"]["4"] == pytest.approx(1.0)
    out = work / "reports/svd"
    for name in ("image_reconstructions.png", "image_curves.png", "lora_one.png", "lora_two.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    tsv = (out / "rank_sweep.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:2] == ["rank", "compression_ratio"] and len(tsv) == 5
    assert "| one | 12 | 4 | 4 |" in (out / "summary.md").read_text()
    assert "Eckart–Young gap" in res.stdout


@pytest.mark.slow
def test_svd_stage_names_a_missing_adapter_and_writes_nothing(base: Path, tmp_path: Path) -> None:
    work = stage_dir(tmp_path, base, ["adapters/absent"])
    res = run_module(["stages.svd"], cwd=work, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "error: adapters/absent: not found: run the stage that writes it first"
    )
    assert not (work / "reports").exists()
