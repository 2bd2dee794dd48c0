"""GGUF export (tunelab/export/gguf_out.py, ollama.py, ggufexport.py), checked
without llama.cpp: every file is read back with transformers' own GGUF loader and the
`gguf` package's reader, and compared with the model in PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.export import gguf_out, ollama
from tunelab.training.runfolder import RunError

from .rows import SFT_ROWS, tiny_cfg, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "Write a haiku about rain.", "12345 + 678 = ?", "def f(x):\n    return x*2",
           "Ünïcödé — and emoji 🙂 too"]
# How close each type's logits stay to the PyTorch model's (the tiny random model's logits
# span about ±1.5): float types by the largest difference, 4-bit types by top-1 agreement.
TOLERANCE = {"f32": {"max_diff": 1e-5}, "f16": {"max_diff": 5e-3}, "bf16": {"max_diff": 2e-2},
             "q8_0": {"max_diff": 5e-2}, "q4_0": {"top1": 0.9}, "q4_1": {"top1": 0.9}}


def _chat_texts(tok):
    convs = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    convs.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}])
    return [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]


def _weights(model):
    return ((k, v.detach().float().numpy()) for k, v in model.state_dict().items())


def _load(folder, name):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()


def _logits(model, tok, texts):
    with torch.no_grad():
        return [model(tok(t, return_tensors="pt").input_ids).logits[0] for t in texts]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    config = json.loads(Path(tiny_model_dir, "config.json").read_text())
    return model, tok, config


@pytest.mark.parametrize("kind", gguf_out.TYPES)
def test_each_type_reads_back_as_the_same_model(tiny, tmp_path, kind):
    model, tok, config = tiny
    info = gguf_out.write_model(tmp_path / "m.gguf", config, _weights(model), tok, kind, name="tiny")
    assert info["bytes"] == (tmp_path / "m.gguf").stat().st_size and info["f16_fallback"] == []
    texts = PROMPTS + _chat_texts(tok)
    ref, got = _logits(model, tok, texts), _logits(_load(tmp_path, "m.gguf"), tok, texts)
    tol = TOLERANCE[kind]
    if "max_diff" in tol:
        assert max(float((a - b).abs().max()) for a, b in zip(ref, got)) <= tol["max_diff"]
    else:
        agree = np.mean([float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(ref, got)])
        assert agree >= tol["top1"]
    meta, tensors = (r := gguf_out.read_back(tmp_path / "m.gguf"))["meta"], r["tensors"]
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["llama.block_count"] == config["num_hidden_layers"]
    assert meta["llama.attention.head_count"] == config["num_attention_heads"]
    assert meta["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert meta["llama.context_length"] == config["max_position_embeddings"]
    assert meta["llama.embedding_length"] == config["hidden_size"]
    assert meta["llama.rope.freq_base"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert meta["llama.vocab_size"] == len(tok) == meta["tokenizer.ggml.tokens"]
    assert "output.weight" not in tensors   # tied: llama.cpp takes the head from token_embd
    assert all(t == "F32" for n, t in tensors.items() if n.endswith("norm.weight"))
    layers = {t for n, t in tensors.items() if n.startswith("blk.") and not n.endswith("norm.weight")}
    assert layers == {kind.upper()}
    assert tensors["token_embd.weight"] == ("Q8_0" if kind.startswith("q4") else kind.upper())


def test_tokenizer_template_and_greedy_text_survive_f16(tiny, tmp_path):
    from transformers import AutoTokenizer
    model, tok, config = tiny
    gguf_out.write_model(tmp_path / "m.gguf", config, _weights(model), tok, "f16")
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    for text in PROMPTS + _chat_texts(tok):   # the chat texts hold <|im_start|> / <|im_end|>
        assert back(text).input_ids == tok(text).input_ids, text
    assert back.chat_template == tok.chat_template
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                         tok.pad_token_id)
    ids = tok(_chat_texts(tok)[0], return_tensors="pt").input_ids
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(model.generate(ids, **kw), _load(tmp_path, "m.gguf").generate(ids, **kw))


def test_unsupported_types_architectures_and_weights_are_refused_up_front(tiny, tmp_path):
    model, tok, config = tiny
    with pytest.raises(gguf_out.GGUFError, match="q4_k.*choose one of f16, bf16, q8_0, q4_0, q4_1"):
        gguf_out.write_model(tmp_path / "m.gguf", config, _weights(model), tok, "q4_k")
    for change, words in (({"architectures": ["Qwen2ForCausalLM"]}, "supports LlamaForCausalLM.*Qwen2ForCausalLM"),
                          ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "rope_type 'llama3'"),
                          ({"attention_bias": True}, "attention_bias")):
        with pytest.raises(gguf_out.GGUFError, match=words):
            gguf_out.write_model(tmp_path / "m.gguf", config | change, _weights(model), tok, "f16")
    with pytest.raises(gguf_out.GGUFError, match="model.extra.weight"):
        gguf_out.write_model(tmp_path / "m.gguf", config, [("model.extra.weight", np.zeros((4, 4)))], tok, "f16")


def test_a_lora_adapter_in_llamacpps_layout_adds_up_to_peft_merge(tiny, tmp_path):
    """llama.cpp applies an adapter as W + (alpha / r) · B·A on the file's (reordered) weights:
    done here in numpy on what the files hold, it must give PEFT's merged model."""
    import gguf
    from peft import LoraConfig, get_peft_model
    model, tok, config = tiny
    torch.manual_seed(0)
    peft = get_peft_model(_copy(model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    adapter = {k: v.detach().float().numpy() for k, v in peft.state_dict().items() if "lora_" in k}
    gguf_out.write_adapter(tmp_path / "a.gguf", config, adapter, alpha=8)
    gguf_out.write_model(tmp_path / "base.gguf", config, _weights(model), tok, "f32")
    merged = {k: v.float().numpy() for k, v in peft.merge_and_unload().state_dict().items()}
    base = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(tmp_path / "base.gguf")).tensors}
    reader = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    meta = gguf_out.read_back(tmp_path / "a.gguf")["meta"]
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 8 and meta["general.architecture"] == "llama"
    lora = {t.name: np.array(t.data) for t in reader.tensors}
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    checked = 0
    for hf_name, w in merged.items():
        if not hf_name.endswith("_proj.weight"):
            continue
        name = gguf_out.gguf_name(hf_name)
        a, b = lora[name + ".lora_a"], lora[name + ".lora_b"]
        assert a.shape == (4, w.shape[1]) and b.shape == (w.shape[0], 4)
        want = gguf_out.llama_rows(w, n_head if "q_proj" in hf_name else n_kv) if hf_name[-13:-7] in ("q_proj", "k_proj") else w
        np.testing.assert_allclose(base[name] + (8 / 4) * b @ a, want, atol=1e-5)
        checked += 1
    assert checked == 7 * config["num_hidden_layers"]
    with pytest.raises(gguf_out.GGUFError, match="not a LoRA A or B"):
        gguf_out.write_adapter(tmp_path / "b.gguf", config, {"base_model.model.lm_head.modules_to_save.weight":
                                                             np.zeros((2, 2))}, alpha=8)


def _copy(model):
    import copy
    return copy.deepcopy(model)


def test_ollama_template_renders_as_the_jinja_template(tiny):
    _, tok, _ = tiny
    fmt = ollama.chat_format(tok)
    assert fmt["format"] == "chatml" and "SmolLM" in fmt["default_system"]   # SmolLM2's template adds one
    convs = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
             [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]]
    for conv in convs:   # Ollama adds SYSTEM when the conversation has none, as the Jinja template does
        assert ollama.render(conv, fmt["default_system"]) == tok.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=True)
    text = ollama.modelfile("m.gguf", tok, {"temperature": 0.2, "top_p": 0.9, "max_new_tokens": 128}, "defaults")
    assert "FROM ./m.gguf\n" in text and f'TEMPLATE """{ollama.GO_CHATML}"""' in text
    assert f'SYSTEM """{fmt["default_system"]}"""' in text and "PARAMETER num_predict 128" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "ADAPTER" not in text


def _gguf(ref, out, kind, adapter=False, labels_db=None, measure=True):
    """export_gguf as the CLI calls it: run `ref` looked up, how the arena last used it read from `labels_db`."""
    from tunelab.arena.chat import run_settings
    from tunelab.export.ggufexport import export_gguf
    from tunelab.training.runs import export_source
    run = export_source(ref)
    return export_gguf(run, out, kind, adapter=adapter, used=run_settings(run.name, labels_db), measure=measure)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from tunelab import run
    data = write_jsonl(tmp_path_factory.mktemp("gguf-data") / "sft.jsonl", SFT_ROWS)
    return run(tiny_cfg(tiny_model_dir, data, "lora", max_steps=2, lr=5e-2))


def test_a_finished_lora_run_exports_merged_with_modelfile_and_card(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer
    from tunelab.arena.prefs import LabelStore
    from tunelab.modelio import loading
    from tunelab import RunConfig

    run_id = lora_run.run_id
    store = LabelStore(tmp_path / "labels.db")   # the arena used this run with its own settings
    store.create_set("s")
    store.add_thumb("s", prompt=[{"role": "system", "content": "Reply in one line."},
                                 {"role": "user", "content": "Hi"}], answer="Hello.", up=True, annotator="t",
                    source={"model": f"run:{run_id}", "temperature": 0.5, "top_p": 0.8, "max_new_tokens": 64})
    done = _gguf(run_id, tmp_path / "out", "f16", labels_db=tmp_path / "labels.db")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{run_id}-f16.gguf", "Modelfile", "README.md"])
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    assert done["files"][0]["bytes"] == (out / f"{run_id}-f16.gguf").stat().st_size and done["seconds"] > 0
    cfg = RunConfig.from_yaml(lora_run.run_dir / "config.yaml")
    merged = PeftModel.from_pretrained(loading.load_model(cfg.model, dtype=torch.float32),
                                       str(lora_run.run_dir / "model")).merge_and_unload().eval()
    tok = AutoTokenizer.from_pretrained(str(lora_run.run_dir / "model"))
    texts = _chat_texts(tok)
    diff = max(float((a - b).abs().max()) for a, b in zip(_logits(merged, tok, texts),
                                                         _logits(_load(out, f"{run_id}-f16.gguf"), tok, texts)))
    assert diff <= TOLERANCE["f16"]["max_diff"]
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{run_id}-f16.gguf" in modelfile and 'SYSTEM """Reply in one line."""' in modelfile
    assert "PARAMETER temperature 0.5" in modelfile and "PARAMETER top_p 0.8" in modelfile
    assert "PARAMETER num_predict 64" in modelfile and "as last used in the arena" in modelfile
    card = (out / "README.md").read_text()
    assert "llama-cli -m" in card and "ollama create" in card and "library_name: gguf" in card

    _gguf(run_id, tmp_path / "plain", "q8_0", labels_db=tmp_path / "none.db")   # no label: the defaults
    assert "PARAMETER temperature 0.2" in (tmp_path / "plain" / "Modelfile").read_text()

    adapter = _gguf(run_id, tmp_path / "adapter", "q8_0", adapter=True, labels_db=tmp_path / "none.db")
    names = sorted(Path(f["path"]).name for f in adapter["files"])
    assert names == sorted([f"{run_id}-base-q8_0.gguf", f"{run_id}-lora.gguf"])
    modelfile = (tmp_path / "adapter" / "Modelfile").read_text()
    assert f"FROM ./{run_id}-base-q8_0.gguf" in modelfile and f"ADAPTER ./{run_id}-lora.gguf" in modelfile
    assert "--lora" in (tmp_path / "adapter" / "README.md").read_text()


def test_bad_exports_are_one_line_errors_and_leave_nothing(lora_run, tmp_path, tmp_path_factory, monkeypatch):
    import shutil

    import yaml
    from tunelab.common import workspace
    from tunelab.export import ggufexport

    # The broken copies live in a workspace of their own: a copy marked as running under this
    # (live) process would count as a training run for every later test of the session.
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path_factory.mktemp("gguf-home")))
    run_id = str(lora_run.run_dir)   # by path: it is in the session's workspace
    with pytest.raises(RunError, match=f"{lora_run.run_id}: GGUF type 'q3_k' is not supported; choose one of"):
        _gguf(run_id, tmp_path / "a", "q3_k")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(RunError, match="exists and is not empty"):
        _gguf(run_id, tmp_path / "full", "f16")
    assert (tmp_path / "full" / "x").read_text() == "keep"

    def copy_as(name, status=None, model=None):
        d = workspace.runs_dir() / name
        shutil.copytree(lora_run.run_dir, d)
        if status:
            st = json.loads((d / "status.json").read_text())
            (d / "status.json").write_text(json.dumps(st | status))
        if model:
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            (d / "config.yaml").write_text(yaml.safe_dump(cfg | {"model": model}))
        return name
    name = lora_run.run_id
    cases = [(copy_as(f"{name}-failed", {"status": "failed"}), "cannot export a failed run"),
             (copy_as(f"{name}-running", {"status": "running", "pid": os.getpid(), "pid_start": None}),
              "cannot export a running run"),
             (copy_as(f"{name}-nobase", model=str(tmp_path / "gone")), "its base model .* cannot be found")]
    for name, words in cases:
        with pytest.raises(RunError, match=f"^{name}: {words}") as e:
            _gguf(name, tmp_path / "new", "f16")
        assert "\n" not in str(e.value) and not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []

    def broken(*a, **k):   # the disk fills up half-way through the file
        Path(a[0]).write_bytes(b"GGUF half")
        raise OSError("No space left on device")
    monkeypatch.setattr(ggufexport.gguf_out, "write_model", broken)
    with pytest.raises(OSError):
        _gguf(run_id, tmp_path / "new", "f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]   # no folder under the name, no temporary one


def test_cli_export_gguf(lora_run, tmp_path, tunelab_home):
    env = dict(os.environ, TUNELAB_HOME=str(tunelab_home))
    cmd = [sys.executable, "-m", "tunelab", "export", lora_run.run_id, "--out", str(tmp_path / "g")]
    bad = subprocess.run(cmd + ["--gguf", "q5_k"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "invalid choice: 'q5_k'" in bad.stderr
    ok = subprocess.run(cmd + ["--gguf", "q4_0"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert f"{lora_run.run_id}-q4_0.gguf  q4_0" in ok.stdout and "MiB  written in" in ok.stdout
    assert (tmp_path / "g" / "Modelfile").is_file()


def test_the_cli_offers_every_type_the_writer_takes_and_names_them_in_its_help(capsys):
    """Through the CLI's own parser: `export --gguf T` parses for each type the writer
    takes, a type it does not take is refused, and `export --help` names every one."""
    from tunelab.__main__ import build_parser
    parser = build_parser()
    for kind in gguf_out.TYPES:
        assert parser.parse_args(["export", "run-1", "--out", "o", "--gguf", kind]).gguf == kind
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "run-1", "--out", "o", "--gguf", "q5_k"])
    assert "invalid choice: 'q5_k'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())   # argparse wraps the lines
    missing = [kind for kind in gguf_out.TYPES if kind not in helptext]
    assert not missing, f"export --help does not name {missing}: {helptext}"


def test_the_untouched_bundled_model_round_trips_to_its_own_gguf_file(bundled_model_dir, tmp_path):
    """The bundled model arrives as a Q4_1 GGUF file, converted once to float32 safetensors.
    Written back as q4_1, every tensor is byte for byte the original's (token_embd as Q8_0,
    norms as F32, as llama.cpp's quantizer left them), and the metadata that describes the
    model and its tokenizer is the same."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.modelio import models
    from tunelab.export.ggufexport import source_pre

    from .conftest import BUNDLED
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir, dtype=torch.float32)
    config = json.loads(Path(bundled_model_dir, "config.json").read_text())
    info = gguf_out.write_model(tmp_path / "base.gguf", config, _weights(model), tok, "q4_1", pre=source_pre(BUNDLED))
    del model
    spec = models.BUNDLED_MODELS[models.bundled_key(BUNDLED)]
    theirs = gguf.GGUFReader(str(models.package_dir(spec) / spec.gguf_file))
    ours = gguf.GGUFReader(str(tmp_path / "base.gguf"))
    assert info["tensors"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in theirs.tensors)
    for t in theirs.tensors:
        assert mine[t.name].tensor_type == t.tensor_type, t.name
        assert np.array_equal(np.asarray(mine[t.name].data), np.asarray(t.data)), t.name
    naming = {"general.name", "general.organization", "general.finetune", "general.basename", "general.size_label",
              "general.license", "general.languages"}
    for key, field in theirs.fields.items():
        if key.startswith("GGUF.") or key in naming:
            continue
        assert ours.fields[key].contents() == field.contents(), key


def test_the_runs_tab_offers_the_types_the_writer_takes():
    from tunelab.ui.runs_tab import GGUF_CHOICES
    assert sorted(GGUF_CHOICES) == sorted(gguf_out.TYPES) and GGUF_CHOICES[0] == "q8_0"


def test_a_full_run_exports_as_it_was_saved(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab import run

    data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    result = run(tiny_cfg(tiny_model_dir, data, "full", max_steps=1, lr=1e-2))
    done = _gguf(result.run_id, tmp_path / "out", "f32", labels_db=tmp_path / "labels.db")
    saved = AutoModelForCausalLM.from_pretrained(str(result.run_dir / "model"), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(result.run_dir / "model"))
    texts = _chat_texts(tok)
    got = _logits(_load(tmp_path / "out", Path(done["files"][0]["path"]).name), tok, texts)
    assert max(float((a - b).abs().max()) for a, b in zip(_logits(saved, tok, texts), got)) <= 1e-5
    with pytest.raises(RunError, match="--gguf-adapter needs an adapter run"):
        _gguf(result.run_id, tmp_path / "adapter", "f16", adapter=True)


def test_tokenizers_gguf_cannot_describe_are_refused_by_name(tiny):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    word = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    with pytest.raises(gguf_out.GGUFError, match="byte-level BPE.*WordLevel"):
        gguf_out.read_tokenizer(word)
    _, tok, _ = tiny
    spec = json.loads(tok.backend_tokenizer.to_str())
    bpe = Tokenizer.from_str(json.dumps(spec))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(gguf_out.GGUFError, match="pre-tokenizer.*Metaspace"):
        gguf_out.read_tokenizer(PreTrainedTokenizerFast(tokenizer_object=bpe))


def test_a_system_prompt_a_modelfile_cannot_quote_is_left_out_with_a_note(tiny):
    _, tok, _ = tiny
    text = ollama.modelfile("m.gguf", tok, {"temperature": 0.2, "top_p": 0.9, "max_new_tokens": 64,
                                            "system": 'Say """hi"""'}, "test")
    assert "SYSTEM" not in text.replace("# SYSTEM left out", "") and '# SYSTEM left out: the system prompt contains' in text
