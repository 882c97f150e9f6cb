"""The --tiny overlay of the GPU check: 4-bit and packing stay, float32 and a few short
steps, since a bitsandbytes 4-bit step in bf16 on a CPU takes minutes even for a tiny
model. Applied over profiles/gpu.yaml and profiles/gpu-check.yaml in the scratch copy."""

from __future__ import annotations

_TINY_TRAIN = {
    "model": {"dtype": "float32"},
    "data": {"max_length": 256},
    "optim": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2},
}
TINY_OVERLAY = {
    "train": {
        "alpaca": _TINY_TRAIN,
        "medical": _TINY_TRAIN,
        "legal": _TINY_TRAIN,
        "gsm8k": {
            "model": {"dtype": "float32"},
            "grpo": {
                "max_completion_length": 16,
                "optim": {
                    "per_device_train_batch_size": 8,
                    "gradient_accumulation_steps": 1,
                    "max_steps": 1,
                },
            },
        },
        "car_insurance": {
            "model": {"dtype": "float32"},
            "optim": {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_steps": 2,
            },
        },
    },
    "pretrain": {
        s: {
            "model": {"dtype": "float32"},
            "data": {"max_length": 128},
            "optim": {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_steps": 2,
            },
        }
        for s in ("medical", "legal")
    },
    "train_pref": {
        m: {
            "model": {"dtype": "float32"},
            "max_length": 256,
            "optim": {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_steps": 2,
            },
        }
        for m in ("dpo", "orpo")
    },
    "evaluate_pref": {
        m: {"model": {"dtype": "float32"}, "max_samples": 4, "decoding": {"max_new_tokens": 8}}
        for m in ("dpo", "orpo")
    },
    "evaluate": {
        **{
            s: {"model": {"dtype": "float32"}, "max_samples": 4, "decoding": {"max_new_tokens": 8}}
            for s in ("alpaca", "medical", "legal")
        },
        # bitsandbytes' 4-bit CPU matmul returns an empty row for the tiny vision tower's
        # qkv (width 48) under generate ("shape '[96, 0]' is invalid"); on the H200 the
        # 4-bit VL evaluation runs (gpu_check_h200_run1.json), so only --tiny loads it full.
        "car_insurance": {
            "model": {"dtype": "float32", "load_in_4bit": False},
            "max_samples": 4,
            "decoding": {"max_new_tokens": 8},
        },
        "gsm8k": {"model": {"dtype": "float32"}, "max_samples": 4, "max_gen_toks": 16},
    },
    "lowrank": {"svd": {"lora": {"layers": [0]}}},
}
