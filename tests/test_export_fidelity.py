"""Does an export still hold the run? (tunelab/export/fidelity.py, wired into GGUF export,
the CLI, the model card and the Runs tab.)

The case the measure exists for, built small: a tiny model whose layers sit on the Q4_1
grid (as the bundled model's do: it was a Q4_1 file), a real LoRA run on it whose update
is under half a grid step everywhere, and its q4_1 export, which rounds the update away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.export import fidelity, gguf_out

from .rows import SFT_ROWS, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def _roundtrip(array, qtype):
    import gguf
    return gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)


@pytest.fixture(scope="module")
def grid_base(tiny_model_dir, tmp_path_factory):
    """The tiny model with its layers' weights on the Q4_1 grid and its embedding on Q8_0's
    (what a q4_1 file holds). The layers are ten times the tiny model's: at its own scale
    they barely move its answers (its logits come from the tied embedding), so no update of
    theirs could show."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    T = gguf.GGMLQuantizationType
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, w in model.state_dict().items():
            if name.endswith("_proj.weight"):
                w.copy_(torch.from_numpy(_roundtrip(w.numpy() * 10, T.Q4_1)))
            elif name == "model.embed_tokens.weight":
                w.copy_(torch.from_numpy(_roundtrip(w.numpy(), T.Q8_0)))
    out = tmp_path_factory.mktemp("grid-base")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def grid_run(grid_base, tmp_path_factory):
    """A two-step LoRA run on the grid base, small enough that its merged update stays under
    half a Q4_1 grid step in every weight (checked here, so the tests mean what they say)."""
    from tunelab import RunConfig, run
    from tunelab.export.folder import merged_model
    data = write_jsonl(tmp_path_factory.mktemp("fidelity-data") / "sft.jsonl", SFT_ROWS)
    cfg = RunConfig.from_dict({"method": "lora", "model": grid_base, "data": {"train": data},
                               "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "max_length": 64,
                                         "precision": "fp32"},
                               "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    result = run(cfg)
    from safetensors.torch import load_file
    base = load_file(f"{grid_base}/model.safetensors")
    merged = merged_model(cfg, result.run_dir / "model").state_dict()
    ratios = []
    for name, w in base.items():
        if name.endswith("_proj.weight"):
            blocks = w.reshape(-1, 32)
            step = (blocks.max(1).values - blocks.min(1).values) / 15
            ratios.append(((merged[name].reshape(-1, 32) - blocks).abs() / step[:, None]).flatten())
    ratios = torch.cat(ratios)
    assert float(ratios.max()) < 0.5 and float(ratios.median()) > 0.01   # small, but an update
    return result


def test_a_q4_1_export_of_a_small_update_on_a_q4_1_base_loses_it_and_f16_keeps_it(grid_run, tmp_path):
    from tunelab.export.ggufexport import export_gguf
    from tunelab.training.runs import export_source
    lost = export_gguf(export_source(grid_run.run_id), tmp_path / "q4_1", "q4_1")["fidelity"]
    assert lost["verdict"] == "lost", lost
    assert lost["closer_to_base"] > lost["closer_to_run"]   # it answers like the base
    assert lost["agreement"] < fidelity.MIN_AGREEMENT and lost["kl"] > 0
    assert lost["instead"]   # what to download instead, in words
    card = (tmp_path / "q4_1" / "README.md").read_text()
    assert "**Still the run?** Lost the run's change:" in card and "This file has lost the run's change" in card
    assert f"Export another type instead: {lost['instead']}" in card

    kept = export_gguf(export_source(grid_run.run_id), tmp_path / "f16", "f16")["fidelity"]
    assert kept["verdict"] == "keeps", kept
    assert kept["agreement"] > 0.99 and kept["kl"] < 1e-4 and kept["closer_to_base"] == 0
    assert kept["closer_to_run"] == kept["prompts"] - kept["same_as_base"] > 0
    assert kept["base_agreement"] < 0.95   # the run did move away from its base: the test has something to lose
    card = (tmp_path / "f16" / "README.md").read_text()
    assert "**Still the run?** Keeps the run:" in card and "has lost" not in card


def test_the_4bit_base_with_the_adapter_keeps_it_and_the_runs_tab_says_so(grid_run, tmp_path):
    from tunelab.ui import exports, runs_logic
    zipped = exports.export_zip(grid_run.run_id, True, tmp_path, gguf="q4_1", gguf_adapter=True)
    assert zipped.name == f"{grid_run.run_id}-gguf-q4_1-adapter.zip"
    with zipfile.ZipFile(zipped) as z:
        assert {f"{grid_run.run_id}-base-q4_1.gguf", f"{grid_run.run_id}-lora.gguf"} <= set(z.namelist())
    measured = exports.measured(zipped)
    assert measured["verdict"] == "keeps" and measured["agreement"] > 0.99
    assert exports.export_zip(grid_run.run_id, True, tmp_path, gguf="q4_1", gguf_adapter=True) == zipped
    assert exports.measured(zipped) == measured   # a second download says it too
    text, kind = runs_logic.fidelity_message(measured, "q4_1", adapter=True)
    assert kind == "ok" and text.startswith("Keeps the run: ")

    merged = exports.export_zip(grid_run.run_id, True, tmp_path, gguf="q4_1")
    text, kind = runs_logic.fidelity_message(exports.measured(merged), "q4_1", adapter=False)
    assert kind == "warn" and text.startswith("Careful: this q4_1 file has lost the run's change")
    assert "answer like the base model" in text
    assert f"Download another type instead: {exports.measured(merged)['instead']}." in text
    assert exports.measured(exports.export_zip(grid_run.run_id, False, tmp_path)) is None   # not a GGUF


def test_the_cli_prints_the_measure_and_what_to_export_instead(grid_run, tmp_path, tunelab_home):
    env = dict(os.environ, TUNELAB_HOME=str(tunelab_home))
    done = subprocess.run([sys.executable, "-m", "tunelab", "export", grid_run.run_id, "--gguf", "q4_1",
                           "--out", str(tmp_path / "g")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    said = next(line for line in lines if line.startswith("Lost the run's change: "))
    assert "next-token agreement with the run (the base: " in said and "KL " in said
    assert "answers closer to the run 0, to the base " in said
    assert any(line.startswith("This file has lost the run's change (") and "Export another type instead: " in line
               for line in lines)


def test_no_check_skips_the_measure_and_the_card_says_so(grid_run, tmp_path):
    from tunelab.export.ggufexport import export_gguf
    from tunelab.training.runs import export_source
    done = export_gguf(export_source(grid_run.run_id), tmp_path / "g", "q8_0", measure=False)
    assert done["fidelity"] is None
    assert "**Still the run?** Not measured (exported with `--no-check`)." in (tmp_path / "g" / "README.md").read_text()


def test_a_run_that_barely_changed_its_base_is_said_so_not_flagged(grid_base, tmp_path):
    """When the run answers as its base does, "closer to the base" means nothing: the verdict
    says the run barely changed the base instead of calling the file lost."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(grid_base)
    model = AutoModelForCausalLM.from_pretrained(grid_base, dtype=torch.float32)
    config = json.loads(Path(grid_base, "config.json").read_text())
    convs = fidelity.conversations(None, n=3)   # no run config: the general prompts
    assert convs == [[{"role": "user", "content": p}] for p in fidelity.GENERAL_PROMPTS[:3]]
    ref = fidelity.reference(model, model, tok, convs, max_new_tokens=12)
    info = gguf_out.write_model(tmp_path / "m.gguf", config,
                                ((k, v.numpy()) for k, v in model.state_dict().items()), tok, "q4_1")
    r = fidelity.score(ref, fidelity.load_export(model, [info], config))
    assert r["verdict"] == "unchanged" and r["same_as_base"] == r["prompts"] == 3
    assert r["agreement"] == 1.0 and "cannot say whether a larger change would survive" in r["why"]
    assert fidelity.line(r).startswith("The run barely changed the base: 100.0% next-token agreement")


def _result(**change):
    r = {"agreement": 0.97, "kl": 0.002, "kl_to_base": 0.0035, "prompts": 6, "same_as_base": 4, "closer_to_run": 2,
         "closer_to_base": 0, "ties": 0, "neither": 0, "base_agreement": 0.98, "base_kl": 0.0014}
    return r | change


@pytest.mark.parametrize("change, verdict, words", [
    ({}, "keeps", "closer to the run's on 2 and to the base's on 0 of the 2 prompts"),
    ({"closer_to_run": 0, "closer_to_base": 2}, "lost", "closer to the base's than to the run's on 2 of the 2"),
    # as many answers each way: the next-token distributions decide
    ({"closer_to_run": 1, "closer_to_base": 1}, "keeps", "nearer the run's next-token distributions"),
    ({"closer_to_run": 1, "closer_to_base": 1, "kl_to_base": 0.0001}, "lost",
     "nearer the base's (KL 0.0001) than the run's (KL 0.0020)"),
    ({"agreement": 0.7}, "lost", "70% next-token agreement with the run, under the 90%"),
    ({"same_as_base": 6, "closer_to_run": 0}, "unchanged", "answers as its base does on all 6 prompts"),
    ({"same_as_base": 6, "closer_to_run": 0, "agreement": 0.7}, "lost", "under the 90%"),   # far from both
])
def test_the_verdict(change, verdict, words):
    got, why = fidelity.verdict(_result(**change))
    assert got == verdict and words in why


def test_a_file_as_near_the_base_as_the_run_keeps_it_only_roughly_and_the_page_says_what_keeps_it():
    from tunelab.ui import runs_logic
    noisy = _result(base_agreement=0.98, verdict="keeps", instead="f16 keeps it")   # KL 0.002 to the run, 0.0035 to the base
    clear = _result(kl=0.0001, verdict="keeps")
    assert fidelity.roughly(noisy) and not fidelity.roughly(clear)
    assert not fidelity.roughly(_result(verdict="lost"))
    assert fidelity.line(noisy).startswith("Keeps the run only roughly (its rounding noise is about as large as the run's "
                                           "change): 97.0% next-token agreement with the run (the base: 98.0%), KL "
                                           "0.0020 nats (the base: 0.0014); answers closer to the run 2, to the base 0 "
                                           "(of 2 prompts where they differ).")
    assert fidelity.line(clear).startswith("Keeps the run: ")
    text, kind = runs_logic.fidelity_message(noisy | {"roughly": True}, "q8_0", adapter=False)
    assert kind == "warn" and text.endswith("For the run as it trained, download another type: f16 keeps it.")


def test_answers_are_compared_by_token_edit_distance():
    assert fidelity.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert fidelity.edit_distance([1, 9, 3, 4], [1, 2, 3, 4]) == 1 and fidelity.edit_distance([], [1, 2]) == 2
    run, base = [5, 6, 7, 8, 9], [5, 1, 1, 1, 1]
    assert fidelity.closer([5, 0, 7, 8, 9], run, base) == "run"   # one token swapped, then the run's again
    assert fidelity.closer([5, 1, 1, 1, 2], run, base) == "base"
    assert fidelity.closer([5, 6, 1, 1], [5, 6, 7, 7], [5, 1, 1, 8]) == "tie"   # 2 edits from each
    assert fidelity.closer([9, 9, 9, 9, 9], run, base) == "neither"   # as far from each as they are apart
    assert fidelity.closer([1], [2], [2]) == "same"


def test_files_read_back_as_the_model_and_the_adapter_adds_up_to_peft_merge(tiny_model_dir, tmp_path):
    """read_weights undoes the writer (names, Q/K row order); an adapter file loaded with
    load_export gives PEFT's merged model, as llama.cpp's W + (α/r)·B·A does."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = json.loads(Path(tiny_model_dir, "config.json").read_text())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    gguf_out.write_model(tmp_path / "m.gguf", config, iter(state.items()), tok, "f32")
    back = gguf_out.read_weights(tmp_path / "m.gguf", config)
    assert sorted(back) == sorted(state)
    for name, w in state.items():
        np.testing.assert_array_equal(back[name], w, err_msg=name)

    torch.manual_seed(0)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    adapter = gguf_out.write_adapter(tmp_path / "a.gguf", config, {k: v.detach().numpy() for k, v in
                                                                   peft.state_dict().items() if "lora_" in k}, 8)
    merged = peft.merge_and_unload().state_dict()
    loaded = fidelity.load_export(copy.deepcopy(model), [tmp_path / "m.gguf", adapter], config).state_dict()
    for name, w in merged.items():
        torch.testing.assert_close(loaded[name], w, atol=1e-6, rtol=0, msg=name)
    with pytest.raises(gguf_out.GGUFError, match="a.gguf is a GGUF adapter, not a model"):
        gguf_out.read_weights(tmp_path / "a.gguf", config)
    with pytest.raises(gguf_out.GGUFError, match="m.gguf is not a GGUF LoRA adapter"):
        gguf_out.read_adapter(tmp_path / "m.gguf", config)


FIGURES = {"date": "2026-01-02", "model": "smollm2-135m-instruct", "machine": "2-core test CPU (AVX2)", "run": {"what": "7-step DPO run"},
           "types": {"f16": {"type": "f16", "adapter": False, "base_type": None, "mib": 258.3, "agreement": 0.991,
                             "verdict": "keeps"},
                     "q4_1": {"type": "q4_1", "adapter": False, "base_type": None, "mib": 93.8, "agreement": 0.988,
                              "verdict": "lost"},
                     "q4_0+lora": {"type": "q4_0", "adapter": True, "base_type": "q4_0", "mib": 96.8,
                                   "agreement": 1.0, "verdict": "keeps"}}}


def test_the_runs_tab_hint_comes_from_the_figures_file(tmp_path):
    from tunelab.ui import runs_logic
    path = tmp_path / "figures.json"
    path.write_text(json.dumps(FIGURES))
    figures = fidelity.load_figures(path)
    hint = runs_logic.gguf_hint(figures)
    assert hint.startswith("Measured on the bundled model, 7-step DPO run (2-core test CPU (AVX2), 2026-01-02)")
    assert "f16 258 MiB, 99% agreement, keeps" in hint and "q4_1 94 MiB, 99% agreement, LOST" in hint
    assert "q4_0 base + adapter 97 MiB, 100% agreement, keeps" in hint
    assert runs_logic.gguf_choices(["q4_1", "q8_0"], figures) == [("q4_1 · 94 MiB · lost the run", "q4_1"),
                                                                  ("q8_0", "q8_0")]   # not measured: its name
    # what to export instead: the smallest that kept it (the adapter arm only for adapter runs)
    assert fidelity.suggestion("q4_1", True, figures=figures).startswith(
        "the q4_0 base + LoRA adapter GGUF (--gguf q4_0 --gguf-adapter; in the Runs tab, tick Base + LoRA adapter) "
        "keeps it (97 MiB")
    assert fidelity.suggestion("q4_1", False, "SmolLM2-135M-Instruct", figures).startswith("f16 keeps it (258 MiB")
    # figures measured on another model say nothing of this one's grid: the types that keep it by construction
    assert fidelity.suggestion("q4_1", True, "/models/other", figures).startswith("f16 or bf16 keep a small update whole")

    assert fidelity.load_figures(tmp_path / "missing.json") is None
    path.write_text("{not json")
    assert fidelity.load_figures(path) is None
    assert runs_logic.gguf_hint(None) == runs_logic.GGUF_PLAIN and "measured against the run" in runs_logic.GGUF_PLAIN
    assert runs_logic.gguf_choices(["q8_0"], None) == [("q8_0", "q8_0")]
    assert fidelity.suggestion("q4_1", False, figures={}) == "f16 or bf16 keep a small update whole"


def test_the_shipped_figures_cover_every_type_the_menu_offers():
    from tunelab.ui.runs_tab import GGUF_CHOICES
    figures = fidelity.load_figures()
    assert figures is not None, f"{fidelity.FIGURES} is missing: run benchmarks/bench_export_fidelity.py"
    rows = figures["types"]
    assert {t for t in GGUF_CHOICES if t != "f32"} <= set(rows)
    assert {"q4_0+lora", "q4_1+lora", "q8_0+lora"} <= set(rows)
    for key, r in rows.items():
        assert r["verdict"] in fidelity.VERDICTS and 0 <= r["agreement"] <= 1 and r["mib"] > 0, key
