"""GGUF export, checked by readers that are not the writer.

The .gguf is read back by transformers' GGUF loader (its own dequantizer, tensor-name
map and tokenizer converter) and by llama.cpp (llama-cpp-python), and compared with
the merged safetensors model of the same adapter: logits, greedy continuations of
held-out prompts, and the token ids of held-out prompts in English and Chinese. The
Modelfile's TEMPLATE is rendered by Go's text/template (the engine Ollama uses) and
compared with the training tokenizer's chat template. Ollama itself is not installable
from the package registries, so `ollama create` is not run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.export import readback
from tunelab.export.merge import export_adapter

from .conftest import ROOT, run_module, section

GO_RENDER = ROOT / "tests" / "ollama_render" / "main.go"
# Max |logit difference| allowed against the merged safetensors model (float32), per
# prompt, on the held-out prompts (logits reach ~11 on the tiny model). Measured
# (bench/results/gguf_agreement_tiny_cpu.json): transformers f16 0 (bf16 weights are
# exact in f16), q8_0 0.10 (mean 0.010); llama.cpp, whose CPU kernels also round the
# activations to the weight type in the products, f16 0.004, q8_0 0.14 (mean 0.014).
TOLERANCE = {"f16": 1e-4, "q8_0": 0.25}
LLAMA_CPP_TOLERANCE = {"f16": 0.02, "q8_0": 0.3}
MEAN_TOLERANCE = {"f16": 1e-5, "q8_0": 0.03}
LLAMA_CPP_MEAN_TOLERANCE = {"f16": 0.002, "q8_0": 0.04}


def held_out(run: Path) -> list[list[dict[str, str]]]:
    """Prompts (system + user) of held-out rows: alpaca (the adapter's), medical, legal."""
    from tunelab.data.common import prompt_of, split_records
    from tunelab.data.legal import prepare_legal
    from tunelab.data.medical import prepare_medical

    rows = [json.loads(x) for x in (run / "data/prepared/alpaca/val.jsonl").open()]
    prompts = [prompt_of(r) for r in rows]
    med = section("prepare.medical", source=str(ROOT / "data/raw/medical"))
    legal = section(
        "prepare.legal",
        exam_source=str(ROOT / "data/raw/legal/judicial_exam.json"),
        counsel_source=str(ROOT / "data/raw/legal/counsel_with_articles.json"),
    )
    for params, prepare in ((med, prepare_medical), (legal, prepare_legal)):
        _, val = split_records(prepare(params)[0], params.split)
        prompts += [prompt_of(r) for r in val[:4]]
    return prompts


def scenario_prompts(run: Path) -> int:
    """How many of held_out()'s prompts are the scenario's own (they come first)."""
    return len((run / "data/prepared/alpaca/val.jsonl").read_text().splitlines())


def chdir_export(run: Path, fn, *args, **kwargs):
    cwd = os.getcwd()
    os.chdir(run)  # the run card names the base and the data relative to the project root
    try:
        return fn(*args, **kwargs)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """f16 (flags) and q8_0 (params.yaml) through the real CLI; the merged reference."""
    work = tmp_path_factory.mktemp("gguf")
    done = run_module(
        [
            "tunelab.cli",
            "export",
            "alpaca",
            "--format",
            "gguf",
            "--quant",
            "f16",
            "--out",
            str(work / "f16"),
            "--params",
            str(ROOT / "params.yaml"),
        ],
        tiny_run,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"written to {work / 'f16' / 'alpaca-f16.gguf'}" in done.stdout
    assert f"ollama create tunelab-alpaca -f {work / 'f16' / 'Modelfile'}" in done.stdout
    out = {"f16": work / "f16"}
    # q8_0 from params.yaml alone (export.output), no flags
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["export"]["output"] = {"format": "gguf", "quant": "q8_0"}
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), "utf-8")
    done = run_module(
        ["tunelab.cli", "export", "alpaca", "--out", str(work / "q8_0")]
        + ["--params", str(work / "params.yaml")],
        tiny_run,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "as GGUF q8_0" in done.stdout
    out["q8_0"] = work / "q8_0"
    chdir_export(
        tiny_run, export_adapter, Path("adapters/alpaca"), work / "merged", section("export.merge")
    )
    out["merged"] = work / "merged"
    return out


def gguf_file(folder: Path) -> Path:
    (path,) = folder.glob("*.gguf")
    return path


def reference_model(exported: dict[str, Path]):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(exported["merged"], dtype=torch.float32).eval()


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_file_card_and_modelfile(exported: dict[str, Path], tiny_run: Path) -> None:
    import gguf

    folder = exported["f16"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "Modelfile",
        "alpaca-f16.gguf",
        "export_card.json",
    ]
    card = json.loads((folder / "export_card.json").read_text())
    path = gguf_file(folder)
    assert card["format"] == "gguf" and card["quant"] == "f16"
    assert card["file_bytes"] == path.stat().st_size
    from tunelab.io import sha256_path

    assert card["sha256"] == sha256_path(path)
    assert card["base_model"]["name_or_path"] == "models/base/text"
    assert card["adapter_sha256"] and card["libraries"]["gguf"]
    # 4 layers x 7 matrices + token_embd; 4 x (2 norms + 3 biases) + output_norm
    assert card["gguf"]["tensor_types"] == {"F16": 29, "F32": 21}
    assert card["modelfile"]["system_prompt_from"] == "data/prepared/alpaca/train.jsonl"

    reader = gguf.GGUFReader(path)
    field = reader.get_field

    assert field("general.architecture").contents() == "qwen2"
    assert field("tokenizer.ggml.model").contents() == "gpt2"
    assert field("tokenizer.ggml.pre").contents() == "qwen2"
    tok = json.loads((tiny_run / "adapters/alpaca/tokenizer.json").read_text())
    assert len(field("tokenizer.ggml.tokens").contents()) == len(tok["model"]["vocab"])
    assert len(field("tokenizer.ggml.merges").contents()) == len(tok["model"]["merges"])
    template = field("tokenizer.chat_template").contents()
    assert "<|im_start|>" in template and not re.search(r"\{%-?\s*(end)?generation", template)

    # the Modelfile, read the way Ollama's parser reads one (commands, """ values)
    commands = read_modelfile((folder / "Modelfile").read_text(encoding="utf-8"))
    assert [c[0] for c in commands] == ["model", "template", *["parameter stop"] * 3, "system"]
    assert commands[0][1] == "./alpaca-f16.gguf"
    assert [v for c, v in commands if c == "parameter stop"] == [
        "<|im_end|>",
        "<|im_start|>",
        "<|endoftext|>",
    ]
    assert dict(commands)["system"] == "You are a helpful assistant."
    assert dict(commands)["template"].startswith("{{- range .Messages }}<|im_start|>")


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def read_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's parser reads a Modelfile.

    Re-expressed from reading Ollama's parser/parser.go (a rune state machine): a
    value runs on, spaces included, until a line break at which the trimmed value is
    complete (in double quotes, in triple double quotes, or bare); `PARAMETER key value` gives "key value".
    Only printable characters, spaces, tabs and line breaks inside a value are kept.
    """
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for ch in text:
        space, newline = ch in " \t", ch in "\r\n"
        keep = ch
        if state == "nil":
            nxt, keep = (
                ("comment", "") if ch == "#" else ("nil", "") if space or newline else ("name", ch)
            )
        elif state == "name":
            assert ch.isascii() and ch.isalpha() or space, f"bad command {buf + ch!r}"
            nxt, keep = ("name", ch) if not space else ("value", "")
        elif state == "parameter":
            nxt, keep = ("parameter", ch) if not space else ("value", "")
        elif state == "comment":
            nxt, keep = ("nil", "") if newline else ("comment", "")
        else:  # value
            nxt = "nil" if space or newline else "value"
        if nxt != state:
            if state == "name":
                name = {"from": "model"}.get(buf.lower(), buf.lower())
                if name == "parameter":
                    nxt = "parameter"
            elif state == "parameter":
                name = f"parameter {buf}"
            elif state == "value":
                value, ok = _unquote(buf.strip())
                if not ok or space:
                    buf += ch
                    continue
                commands.append((name, value))
            buf, state = "", nxt
        if keep and (keep.isprintable() or keep == " "):
            buf += keep
    if state == "value":
        value, ok = _unquote(buf.strip())
        assert ok, "unterminated value"
        commands.append((name, value))
    return commands


def test_the_file_tokenizer_encodes_like_training(
    exported: dict[str, Path], tiny_run: Path
) -> None:
    """Held-out prompts (English, and Chinese medical/legal ones) through the tokenizer that
    transformers rebuilds from the file, and through llama.cpp's: the training ids."""
    from transformers import AutoTokenizer

    train_tok = AutoTokenizer.from_pretrained(tiny_run / "adapters/alpaca")
    path = gguf_file(exported["f16"])
    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    prompts = held_out(tiny_run)
    assert (
        sum(any("\u4e00" <= c <= "\u9fff" for t in p for c in t["content"]) for p in prompts) >= 8
    )
    for messages in prompts:
        text = train_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == gguf_tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        want = train_tok(text, add_special_tokens=False)["input_ids"]
        assert gguf_tok(text, add_special_tokens=False)["input_ids"] == want
        assert gguf_tok.decode(want) == text


def test_transformers_reader_agrees(exported: dict[str, Path], tiny_run: Path) -> None:
    """transformers' GGUF loader against the merged safetensors model: logits within each
    quantization's tolerance; f16 greedy continuations token-identical."""
    from transformers import AutoTokenizer

    train_tok = AutoTokenizer.from_pretrained(tiny_run / "adapters/alpaca")
    prompts = [prompt_ids(train_tok, m) for m in held_out(tiny_run)]
    ref = reference_model(exported)
    for quant, tol in TOLERANCE.items():
        model = readback.hf_gguf_model(gguf_file(exported[quant]))
        mean = 0.0
        for ids in prompts:
            got = readback.compare_logits(
                readback.hf_logits(model, ids), readback.hf_logits(ref, ids)
            )
            assert got["max_abs_diff"] <= tol, (quant, got)
            mean += got["mean_abs_diff"] / len(prompts)
        assert mean <= MEAN_TOLERANCE[quant], (quant, mean)
        if quant == "f16":
            for ids in prompts[: scenario_prompts(tiny_run)]:  # the scenario's own prompts
                assert readback.hf_greedy(model, ids, 24) == readback.hf_greedy(ref, ids, 24)


def test_llama_cpp_reader_agrees(exported: dict[str, Path], tiny_run: Path) -> None:
    """llama.cpp (llama-cpp-python) loads the file with its own loader and kernels: the
    held-out prompts tokenize to the training ids, logits agree, f16 greedy is identical,
    and its chat formatter (the file's chat template) gives the training prompt."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    train_tok = AutoTokenizer.from_pretrained(tiny_run / "adapters/alpaca")
    ref = reference_model(exported)
    prompts = held_out(tiny_run)
    texts = [
        train_tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in prompts
    ]
    ids = [train_tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ref_logits = [readback.hf_logits(ref, x) for x in ids]
    own = scenario_prompts(tiny_run)
    for quant, tol in LLAMA_CPP_TOLERANCE.items():
        llm = readback.llama_cpp_model(gguf_file(exported[quant]), 512, 1)
        try:
            mean = 0.0
            for text, x, want in zip(texts, ids, ref_logits, strict=True):
                assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == x
                assert readback.llama_cpp_detokenize(llm, x) == text
                got = readback.compare_logits(readback.llama_cpp_logits(llm, x), want)
                assert got["max_abs_diff"] <= tol, (quant, got)
                mean += got["mean_abs_diff"] / len(ids)
            assert mean <= LLAMA_CPP_MEAN_TOLERANCE[quant], (quant, mean)
            if quant != "f16":
                continue
            for x in ids[:own]:
                assert readback.llama_cpp_greedy(llm, x, 24) == readback.hf_greedy(ref, x, 24)
            formatter = Jinja2ChatFormatter(
                template=llm.metadata["tokenizer.chat_template"],
                eos_token=train_tok.eos_token,
                bos_token="",
            )
            for messages, text in zip(prompts, texts, strict=True):
                assert formatter(messages=messages).prompt == text
        finally:
            llm.close()


def go_render(template: str, conversations: list[list[dict[str, str]]]) -> list[str]:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (requirements/apt.txt lists golang-go)")
    done = subprocess.run(
        [go, "run", str(GO_RENDER)],
        input=json.dumps({"template": template, "conversations": conversations}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_modelfile_template_renders_the_training_prompt(
    exported: dict[str, Path], tiny_run: Path
) -> None:
    """Go's text/template renders the Modelfile's TEMPLATE, with the SYSTEM put first as
    Ollama does, to exactly the text the training tokenizer's chat template gives."""
    from transformers import AutoTokenizer

    commands = dict(read_modelfile((exported["f16"] / "Modelfile").read_text(encoding="utf-8")))
    train_tok = AutoTokenizer.from_pretrained(tiny_run / "adapters/alpaca")
    system = {"role": "system", "content": commands["system"]}
    users = [[m for m in p if m["role"] != "system"] for p in held_out(tiny_run)]
    users.append(
        [
            {"role": "user", "content": "第一问：两数之和？"},
            {"role": "assistant", "content": "答：\n3"},
            {"role": "user", "content": " trailing space "},
        ]
    )
    conversations = [[system, *u] for u in users]  # a request without a system message
    rendered = go_render(commands["template"], conversations)
    for conversation, text in zip(conversations, rendered, strict=True):
        assert text == train_tok.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


def test_bad_input_one_line_each(tiny_run: Path, tmp_path: Path) -> None:
    from transformers import Qwen2_5_VLConfig

    from tunelab.models.tiny import build_model

    def export(root: Path, *args: str) -> str:
        out = tmp_path / "out"
        line = one_error_line(
            run_module(
                ["tunelab.cli", "export", *args, "--out", str(out)]
                + ["--params", str(ROOT / "params.yaml")],
                root,
            )
        )
        assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing half-written
        return line

    line = export(tiny_run, "alpaca", "--format", "gguf", "--quant", "q4_k_m")
    assert line.startswith("error: --quant: unknown GGUF quantization 'q4_k_m' (gguf-py writes")
    assert export(tiny_run, "alpaca", "--quant", "q8_0") == (
        "error: --quant: applies to --format gguf only"
    )
    assert export(tiny_run, "alpaca", "--format", "onnx") == (
        "error: --format: unknown format 'onnx' (safetensors or gguf)"
    )
    params = (ROOT / "params.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "params.yaml"
    bad.write_text(params.replace("    quant: f16 ", "    quant: q4_k_m "), encoding="utf-8")
    line = one_error_line(
        run_module(["tunelab.cli", "export", "alpaca", "--params", str(bad)], tiny_run)
    )
    assert line.startswith(f"error: {bad}: export.output.quant: Input should be 'f32'")
    assert line.endswith("(got 'q4_k_m')")
    assert export(tmp_path, "alpaca", "--format", "gguf") == (
        "error: adapters/alpaca: adapter folder not found (run `dvc pull` or train)"
    )

    # the base was rebuilt (another architecture) after the adapter was trained
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other / "models/base/text")
    shutil.rmtree(other / "models/base/text")
    base = build_model(section("base.text", architecture__hidden_size=64), tok)
    base.save_pretrained(other / "models/base/text")
    tok.save_pretrained(other / "models/base/text")
    assert export(other, "alpaca", "--format", "gguf").startswith(
        "error: adapters/alpaca: trained on another base: models/base/text has changed since"
    )

    # a vision-language base: refused before anything is loaded
    vl = tmp_path / "vl"
    Qwen2_5_VLConfig().save_pretrained(vl / "base")
    (vl / "adapters/car_insurance").mkdir(parents=True)
    (vl / "adapters/car_insurance/adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "base"})
    )
    assert export(vl, "car_insurance", "--format", "gguf") == (
        "error: adapters/car_insurance: GGUF export of a vision-language model is not "
        "supported: llama.cpp keeps the vision tower in a separate mmproj file, which one "
        ".gguf cannot hold"
    )


def test_modelfile_refuses_what_it_cannot_translate(tiny_run: Path, tmp_path: Path) -> None:
    """SYSTEM comes from the very data the adapter trained on; a non-ChatML template and an
    unquotable system prompt are refused rather than guessed."""
    from transformers import AutoTokenizer

    from tunelab.errors import TunelabError
    from tunelab.export.ollama import modelfile_text, training_system_prompt
    from tunelab.io import sha256_path

    data = tmp_path / "train.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "你是医生。"},
                {"role": "user", "content": "q"},
            ]
        }
    ]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 2), "utf-8")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    card = {"inputs": {"train": {"path": str(data), "sha256": sha256_path(data)}}}
    (adapter / "run_card.json").write_text(json.dumps(card))
    assert training_system_prompt(adapter) == {"text": "你是医生。", "source": str(data)}
    with data.open("a", encoding="utf-8") as fh:  # rows with another system prompt
        fh.write(json.dumps({"prompt": [{"role": "system", "content": "other"}]}) + "\n")
    with pytest.raises(TunelabError, match="changed since the adapter was trained"):
        training_system_prompt(adapter)
    card["inputs"]["train"]["sha256"] = sha256_path(data)
    (adapter / "run_card.json").write_text(json.dumps(card))
    with pytest.raises(TunelabError, match="2 different system prompts; a Modelfile has one"):
        training_system_prompt(adapter)
    data.unlink()
    with pytest.raises(TunelabError, match="training data named in the run card is missing"):
        training_system_prompt(adapter)

    tok = AutoTokenizer.from_pretrained(tiny_run / "adapters/alpaca")
    assert 'SYSTEM """say hi"""' in modelfile_text("m.gguf", tok, "say hi", "here")
    with pytest.raises(TunelabError, match='contains """'):
        modelfile_text("m.gguf", tok, 'say """hi"""', "here")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TunelabError, match="^here: the chat template is not ChatML"):
        modelfile_text("m.gguf", tok, "say hi", "here")
