"""How many parameters a run trains and how much memory it will peak at, before it starts.

    from tunelab.training.estimate import estimate
    e = estimate(RunConfig(method="qlora"))
    e["trainable_params"], e["peak_memory_mb"], e["breakdown"]    # 2442240, ~9100 (CPU), {...}

No weights are loaded. The model is built from its config.json on the meta device
(shapes only, no storage), PEFT wraps it exactly as a run would, and the parameters
are counted with the same `loading.count_parameters` the run reports, so the
trainable and total counts are exact, not estimated. That takes well under a second.

Memory is a sum of six parts (bytes per parameter unless said otherwise; N = all
parameters, T = trainable ones, Q = the Linear weights QLoRA stores in 4 bits):

    weights      full: 4 B·N (fp32 master weights AdamW updates; bf16/fp16 autocast adds
                 ~2 B·N of cached low-precision copies for the matmuls)
                 lora: base in the compute dtype (4 B fp32, 2 B bf16/fp16) + 4 B·T (fp32 A, B)
                 qlora: 0.5 B·Q (two NF4/FP4 codes a byte) + quantisation constants
                 (one fp32 absmax per 64 weights = 0.5 bit/weight; with double quantisation
                 8 bit per 64 weights + 32 bit per 64·256 = 0.127 bit/weight, QLoRA paper §3)
                 + 4 B for the other weights (embeddings, norms: PEFT's
                 prepare_model_for_kbit_training upcasts them to fp32) + 4 B·T
    gradients    4 B·T (fp32)
    optimizer    8 B·T (AdamW: two fp32 moments)
    reference    DPO with `dpo.adapter: full` holds a frozen copy in the compute dtype;
                 DPO with adapters uses the base with adapters off: no copy
    activations  tokens = batch · length (· 2 for DPO: chosen and rejected of every pair), where
                 batch = train.batch_size, but never more than the training rows (pairs for DPO)
                 left after the eval split: the data loader's one batch then holds them all;
                 length = max_length, but never more than the longest training row in tokens
                 (chat template applied, as TRL tokenizes it): TRL truncates each row to
                 max_length and its collators (DataCollatorForLanguageModeling,
                 DataCollatorForPreference) pad a batch to its longest row, not to max_length.
                 The worst batch holds the longest row, so that is the peak's length.
                 layers: tokens · layers · (10 · hidden + 4 · intermediate) · dtype bytes
                 (+ (dtype bytes + 1) per input element of each LoRA layer when
                 lora.dropout > 0: PEFT keeps the dropped-out copy and its mask);
                 gradient checkpointing keeps one hidden state a layer plus one layer's worth
                 LM head: TRL 1.16 never builds the (tokens × vocab) logits: its fused head
                 scores tiles of ≤4096 tokens × ≤32768 vocab columns. On CPU (no Triton) each
                 tile is folded with plain torch ops that hold ~8 fp32 tile-sized temporaries;
                 HEAD_TILE_COPIES counts them, doubled for the allocator churn they cause
    overhead     the process before any model: Python + torch + transformers + trl + peft;
                 QLoRA on CPU adds what quantising while loading leaves behind
                 (CUDA: none; the run then reports torch.cuda.max_memory_allocated, tensors
                 only, without the process or the CUDA context)

How the constants were chosen. Per token, a Llama decoder layer keeps for the backward
pass about 10 hidden-sized tensors (norm outputs, q, k, v, their rotated and
GQA-repeated copies, the attention output, residuals) and 4 intermediate-sized ones
(gate, up, silu(gate), silu(gate)·up): 47.6 KB a token a layer in fp32 for SmolLM2
(hidden 576, intermediate 1536). Counting the tensors autograd saved in one forward
(torch.autograd.graph.saved_tensors_hooks, 4 layers, batch 4 × 128) gave 46.3 KB
for full and +21.6 KB with LoRA dropout (the formula says +25 KB). For comparison,
Korthikanti et al. 2022 count 34 B · hidden per token a layer in 16-bit for a GPT layer
(4·hidden MLP, no GQA), ~17 tensors' worth. The torch profiler's memory timeline of
one real LoRA step (batch 4 × 128) peaked at 522 MB parameters + 1014 MB activations
+ 524 MB temporaries, the temporaries being the fused head's tiles (8 × 512 tokens ×
32768 × 4 B = 512 MB); with gradient checkpointing the activations fell to 36 MB and
the temporaries stayed. The RSS peak sits above the tensor peak by about as much again
as the head temporaries (glibc keeps and fragments the freed blocks), hence the
doubling; fitting on the runs below gave 16 copies.

Calibration on this machine (2-core AMD EPYC, CPU, fp32, SmolLM2-135M bundled, 2 steps
via tunelab.run, rows long enough that every sequence is max_length tokens; measured =
summary["peak_memory_mb"], the ru_maxrss of a fresh process; estimated = this module):

    run                           measured MB   estimated MB   est / measured
    lora   batch 4, len 128            3059          3038            0.99
    qlora  batch 4, len 128            2730          2887            1.06
    full   batch 4, len 128            3554          4174            1.17
    lora   batch 1, len 128            1614          1472            0.91
    lora   batch 8, len 128            5244          5125            0.98
    lora   batch 1, len 128, ckpt      1353          1224            0.90
    lora   batch 4, len 128, ckpt      2258          2044            0.91
    lora   batch 2, len 256, ckpt      2199          2044            0.93
    qlora  batch 1, len 128            1641          1322            0.81
    full   batch 1, len 128            2982          2883            0.97
    dpo    lora, batch 2, len 128      2719          3038            1.12

Full fine-tuning at larger batches is overestimated most: its gradients reuse memory
the activations free during the backward pass, and the sum counts both. DPO and the GPU
path are not calibrated beyond the one DPO row; the GPU head term is a guess (the Triton
kernel scores only the answer tokens, in place).

`tests/test_estimate.py` checks the counts against real runs on a tiny model and one
bundled-model run against the estimate (slow test).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path


from .. import data as data_mod
from ..common.imports import one_at_a_time
from ..modelio import hub, loading, models
from .config import LoraConfig, RunConfig
from .run import resolve_hardware

MB = 2**20

# Measured here once: ru_maxrss after `import torch, transformers, trl, peft` in a fresh
# Python 3.11 process = 395 MB (torch alone: 223 MB). A run also holds the tokenizer,
# the datasets and the Trainer: round up.
OVERHEAD_MB = 400

# Saved activations per token per decoder layer, in hidden-sized and intermediate-sized
# tensors (see the docstring); multiplied by the compute dtype's bytes.
ACT_HIDDEN_TENSORS = 10
ACT_INTERMEDIATE_TENSORS = 4
# TRL's fused LM head (trl/kernels/chunked_logprob.py): tiles of TOKEN_CHUNK_SIZE tokens
# x _CHUNKED_LOGPROB_CHUNK_SIZE vocab columns, folded in fp32.
HEAD_TILE_TOKENS = 4096
HEAD_TILE_VOCAB = 32768
# fp32 tile-sized buffers the head costs at the peak: on CPU 8 live temporaries (torch
# profiler) x 2 for allocator churn (fit to the calibration table); on CUDA the Triton
# kernel works in place on one tile buffer (a guess, not measured).
HEAD_TILE_COPIES = {"cpu": 16, "cuda": 2}
# QLoRA on CPU: bitsandbytes quantises while loading, from compute-dtype weights; the
# allocator keeps about half of that copy (RSS after loading was 1019 MB for qlora vs
# 568 MB for lora, whose fp32 weights are paged in lazily from the safetensors mmap).
QLORA_CPU_LOAD_KEPT = 0.5

# QLoRA quantisation constants in bits per quantised weight (QLoRA paper, section 3).
QUANT_CONST_BITS = {True: 8 / 64 + 32 / (64 * 256), False: 32 / 64}


def estimate(cfg: RunConfig) -> dict:
    """Parameter counts (exact) and the peak memory (approximate) of a run of `cfg`.

    Keys: trainable_params, total_params, trainable_pct, peak_memory_mb, breakdown
    (MB: weights, gradients, optimizer, activations, reference, overhead), device,
    precision, notes (the assumptions, in short sentences)."""
    import torch
    cfg = cfg.validate()
    hw = resolve_hardware(cfg)
    hub.require(cfg.model)  # a hub id that can't be fetched from here: say so at once, not after ~20 s of retries
    path = models.resolve_model(cfg.model)
    weights_kind = cfg.weights  # full | lora | qlora
    adapters = weights_kind in ("lora", "qlora")
    targets = cfg.lora.target_modules
    targets = targets if isinstance(targets, str) else tuple(targets)
    counts = param_counts(path, cfg.lora.r, targets) if adapters else param_counts(path, None, None)
    shape = counts["shape"]

    base, quantised = counts["base_params"], counts["linear_params"]
    trainable = counts["lora_params"] if adapters else base
    total = base + (trainable if adapters else 0)
    c = torch.tensor([], dtype=hw.compute_dtype).element_size()
    notes = []

    # --- weights
    if weights_kind == "full":
        weights = 4 * base
        notes.append("full: fp32 master weights, fp32 gradients and AdamW moments (16 B a parameter)")
        if hw.precision != "fp32":
            weights += 2 * base
            notes.append(f"{hw.precision} autocast caches 16-bit copies of the weights for the matmuls")
    elif weights_kind == "lora":
        weights = c * base + 4 * trainable
        notes.append(f"lora: frozen base in {hw.precision} ({c} B a weight), adapters A, B in fp32")
    else:
        const_bits = QUANT_CONST_BITS[bool(cfg.qlora.double_quant)]
        weights = quantised * (0.5 + const_bits / 8) + 4 * (base - quantised) + 4 * trainable
        notes.append(f"qlora: {quantised / 1e6:.1f}M Linear weights in 4-bit {cfg.qlora.quant_type} "
                     f"(0.5 B + {const_bits:.2f} bit of scales each); embeddings and norms in fp32")
    gradients = 4 * trainable
    optimizer = 8 * trainable

    # --- the reference model of DPO and KTO (ORPO has none)
    reference, m = 0, cfg.method
    if m == "orpo":
        notes.append("orpo: no reference model, so no second copy and no reference pass")
    elif cfg.adapter:
        if weights_kind == "full" and not getattr(cfg, m).precompute_ref:
            reference = c * base
            notes.append(f"{m} full: a frozen reference copy in {hw.precision}")
        elif weights_kind == "full":
            notes.append(f"{m} full with precompute_ref: reference log-probs computed once, no copy held")
        else:
            notes.append(f"{m} with adapters: the reference is the base with adapters off, no second copy")

    # --- activations, for the batch and length that will really run (see the docstring)
    batch, length, data_notes = _real_batch(cfg, path)
    notes += data_notes
    seqs = batch * (2 if cfg.objective == "dpo" else 1)   # a pair is two sequences (chosen, rejected)
    tokens = seqs * length
    h, inter, layers = shape["hidden"], shape["intermediate"], shape["layers"]
    per_layer = c * (ACT_HIDDEN_TENSORS * h + ACT_INTERMEDIATE_TENSORS * inter)
    if adapters and cfg.lora.dropout > 0:
        per_layer += (c + 1) * counts["lora_inputs"] / max(layers, 1)
    if cfg.train.gradient_checkpointing:
        layer_part = tokens * (layers * c * h + per_layer)
        notes.append("gradient checkpointing: one hidden state a layer kept, one layer recomputed at a time")
    else:
        layer_part = tokens * layers * per_layer
    head_tile = min(tokens, HEAD_TILE_TOKENS) * min(shape["vocab"], HEAD_TILE_VOCAB) * 4
    if m == "orpo" and hw.device != "cpu":
        # TRL's ORPO builds the whole logits there: compute dtype, then fp32 log-softmax and its
        # gradient. On a CPU tunelab scores only the positions its loss reads (methods/orpo.py).
        head = tokens * shape["vocab"] * (c + 8)
        notes.append(f"orpo: full logits for every token ({tokens} × {shape['vocab']:,}), "
                     f"{head / MB:.0f} MB with their fp32 log-softmax")
    else:
        head = HEAD_TILE_COPIES[hw.device] * head_tile
    activations = layer_part + head
    notes.append(f"activations for {seqs} sequence{'s' if seqs > 1 else ''} of {length} tokens"
                 f"{' (chosen + rejected per pair)' if cfg.objective == 'dpo' else ''}; batches of shorter rows "
                 f"use less")
    if m == "kto":
        notes.append("kto: the KL estimate's answers (each prompt with another row's answer) take one more "
                     "forward pass a step, without gradients")
    if hw.device == "cpu":
        notes.append("LM head: TRL scores the vocabulary in tiles; on CPU they cost "
                     f"{HEAD_TILE_COPIES['cpu'] * head_tile / MB:.0f} MB at this batch")

    # --- the process
    if hw.device == "cpu":
        overhead = OVERHEAD_MB * MB
        notes.append(f"overhead: ~{OVERHEAD_MB} MB for Python, torch, transformers, trl and peft")
        if weights_kind == "qlora":
            overhead += QLORA_CPU_LOAD_KEPT * c * quantised
            notes.append("qlora on CPU: quantising while loading leaves part of the full-precision copy behind")
    else:
        overhead = 0
        notes.append("cuda: tensors only, like the run's peak_memory_mb; the CUDA context adds ~0.3-0.5 GB")

    breakdown = {"weights": weights, "gradients": gradients, "optimizer": optimizer,
                 "activations": activations, "reference": reference, "overhead": overhead}
    breakdown = {k: v / MB for k, v in breakdown.items()}
    return {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
        "peak_memory_mb": sum(breakdown.values()),
        "breakdown": breakdown,
        "device": hw.device,
        "precision": hw.precision,
        "batch_size": batch,     # the batch that will run: train.batch_size, at most the training rows
        "seq_length": length,    # tokens a sequence of the worst batch: max_length, at most the longest row
        "notes": notes,
    }


# Files with more rows than this are not tokenized for the estimate (seconds of work at
# every change of a field): their length is taken as max_length, an upper bound.
MEASURE_MAX_ROWS = 20_000


def _real_batch(cfg: RunConfig, model_path: str) -> tuple[int, int, list[str]]:
    """(batch, length, notes): train.batch_size and max_length, each lowered to what the
    training data allows. When the data or the tokenizer can't be read, the config's own
    values (the run itself will say what is wrong with the data)."""
    batch, length = cfg.train.batch_size, cfg.train.max_length
    try:
        path = Path(cfg.data.train).expanduser().resolve()
        st = path.stat()
        lengths = _row_lengths(str(path), st.st_mtime_ns, st.st_size, cfg.objective, model_path)
    except (OSError, ValueError, TypeError, models.ModelError) as e:  # DataError is a ValueError; TypeError: no path
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        return batch, length, [f"the data was not read ({why}): batch_size {batch} and max_length {length} assumed"]
    if cfg.data.eval:   # a separate eval file: every row of this one trains
        train = list(range(len(lengths)))
    else:               # the same seeded split the run makes, on row numbers
        train = data_mod.split_eval(list(range(len(lengths))), cfg.data.eval_fraction, cfg.train.seed)[0]
    notes, rows = [], "pairs" if cfg.objective == "dpo" else "rows"
    if len(train) < batch:
        held = "" if cfg.data.eval or not cfg.data.eval_fraction else " after the eval split"
        notes.append(f"batch: {len(train)}, not {batch}: the training set has {len(train)} {rows}{held}, "
                     f"and one batch cannot hold more")
        batch = max(1, len(train))
    measured = [lengths[i] for i in train if lengths[i] is not None]
    if measured and len(measured) == len(train) and max(measured) < length:
        notes.append(f"length: {max(measured)} tokens, the longest training {rows[:-1]} (chat template applied): "
                     f"batches are padded to their longest row, so max_length {length} is not reached")
        length = max(measured)
    return batch, length, notes


@functools.lru_cache(maxsize=16)
def _row_lengths(path: str, mtime_ns: int, size: int, objective: str, model_path: str) -> tuple:
    """Tokens of each row as TRL builds it (prompt + completion; for DPO the longer of
    prompt + chosen and prompt + rejected), before truncation; None for a row or a file
    not measured. Keyed by the file's mtime and size, so an edited file is read again."""
    _, rows = data_mod.load_examples(path, objective)
    if len(rows) > MEASURE_MAX_ROWS:
        return (None,) * len(rows)
    tok = loading.cached_tokenizer(model_path)

    def count(messages) -> int:
        # What TRL's tokenize step calls for conversational rows (trl.data_utils._tokenize).
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    try:
        if objective == "dpo":
            return tuple(max(count(r["prompt"] + r["chosen"]), count(r["prompt"] + r["rejected"])) for r in rows)
        return tuple(count(r["prompt"] + r["completion"]) for r in rows)
    except Exception:  # noqa: BLE001 — e.g. no chat template: the run will say; assume max_length here
        return (None,) * len(rows)


def wait_note(model: str) -> str | None:
    """What an estimate of `model` must wait for first, when that is more than a moment
    (a page shows it instead of the last model's figures); None when it is quick."""
    if models.bundled_pending(model):
        return ("Preparing the bundled model (first use: converting it from its GGUF file, under a minute; "
                "`scripts/run.sh setup` does it ahead) …")
    if hub.needs_hub(model) and hub.reachable() is not False:
        return f"Reading the config of {str(model).strip()} from the Hugging Face hub …"
    return None


@functools.lru_cache(maxsize=64)
def param_counts(path: str, r: int | None, targets) -> dict:
    """Exact counts from a meta-device skeleton: base params (tied weights once), the
    Linear weights a 4-bit load quantises, and with `r` the LoRA params PEFT adds."""
    import torch
    with one_at_a_time():   # maybe this process's first use of transformers, from a thread (the queue's)
        from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as e:
        raise models.ModelError(f"could not read the config of {path}: {str(e).splitlines()[0][:200]}") from e
    model = skeleton(config)
    _, base = loading.count_parameters(model)
    text = config.get_text_config()
    head = model.get_output_embeddings()
    # bitsandbytes (via transformers) quantises every nn.Linear but the output head.
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    shape = {"hidden": text.hidden_size, "layers": text.num_hidden_layers, "vocab": text.vocab_size,
             "intermediate": getattr(text, "intermediate_size", None) or 4 * text.hidden_size}
    out = {"base_params": base, "linear_params": linear, "shape": shape, "lora_params": 0, "lora_inputs": 0}
    if r is None:
        return out

    with one_at_a_time():
        import peft

    from ..methods import lora

    # alpha and dropout do not change the counts; r and the targets do.
    lcfg = lora.peft_config(RunConfig(lora=LoraConfig(r=r, target_modules=targets if isinstance(targets, str)
                                                      else list(targets))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = peft.get_peft_model(model, lcfg)
        out["lora_params"] = loading.count_parameters(wrapped)[0]
        adapted = [m for m in wrapped.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
        # Inputs each LoRA branch sees (PEFT's dropout keeps one copy per adapted layer).
        out["lora_inputs"] = sum(getattr(m, "in_features", 0) for m in adapted)
    except Exception:  # an architecture PEFT cannot wrap on meta: count r·(in + out) per adapted Linear
        model = skeleton(config)  # the failed wrap may have left half-injected layers behind
        adapted = lora_targets(model, targets, model.get_output_embeddings())
        out["lora_params"] = sum(r * (m.in_features + m.out_features) for m in adapted)
        out["lora_inputs"] = sum(m.in_features for m in adapted)
    return out


def skeleton(config):
    """The model with every tensor on the meta device: shapes, no storage, no init cost."""
    import torch
    with one_at_a_time():   # the model class's module too, which from_config would import lazily
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM
        MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)

    with loading.BUILD_LOCK, torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)


def lora_targets(model, targets, head) -> list:
    """The Linear layers PEFT adapts: for 'all-linear' every Linear but the output head,
    for a list each module whose name is an entry or ends with '.' + an entry."""
    import torch
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear) or m is head:
            continue
        if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets):
            found.append(m)
    return found

