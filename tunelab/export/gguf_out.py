"""Write GGUF files, the format llama.cpp, Ollama and LM Studio run, with the `gguf` package
alone: no llama.cpp checkout, no compiler.

- `write_model`: a whole model, its architecture's metadata, its tokenizer (vocabulary,
  merges, token kinds, BOS/EOS/unknown/pad ids) and chat template, so a llama.cpp-family
  runtime needs nothing else. Types: TYPES.
- `write_adapter`: a LoRA adapter alone, in llama.cpp's adapter layout (`general.type`
  "adapter", `adapter.lora.alpha`, each target's `.lora_a` / `.lora_b`), for runtimes that
  apply it at load time (llama.cpp `--lora`, Ollama's `ADAPTER`).
- `read_weights`, `read_adapter`: such files read back as a runtime sees them (dequantised
  to float32, in Hugging Face's names and row order), so an export can be measured against
  the run it came from (`fidelity.py`).

What is written follows llama.cpp's own converter for the LLaMA architecture (tensor names,
metadata keys, which tensors stay F32, the Q/K row order): llama.cpp's attention rotates
pairs of neighbouring dimensions where Hugging Face's rotates the two halves of each head,
so the rows of the query and key projections (and of LoRA's B for them) are reordered as
llama.cpp expects; transformers' GGUF loader undoes it when it reads the file back.

Where a type cannot take a tensor (its rows are not a whole number of the type's blocks),
that tensor is written as F16, as llama.cpp's converter does. With a 4-bit type the output
head (the token embedding, where the two are tied) is written as Q8_0, as llama.cpp's
quantizer does: its rounding error reaches every logit.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "f32")
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
# The pre-tokenizers llama.cpp knows by name that a Hugging Face tokenizer.json describes.
_PRE = {"gpt2": {"type": "ByteLevel", "use_regex": True},
        "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                         {"type": "ByteLevel", "use_regex": True}]}}


class GGUFError(ValueError):
    """A model, adapter, tokenizer or type that cannot be written; the message says what is supported."""


def _gguf():
    try:
        import gguf
    except ImportError as e:   # requirements.txt has it; a hand-made environment may not
        raise GGUFError("writing GGUF needs the gguf package: pip install gguf") from e
    return gguf


def check_type(kind: str) -> str:
    kind = str(kind).lower()
    if kind not in TYPES:
        raise GGUFError(f"GGUF type {kind!r} is not supported; choose one of {', '.join(TYPES)}")
    return kind


def check_config(config: dict) -> str:
    """The GGUF architecture name of a model config, or a GGUFError naming what is supported."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise GGUFError(f"GGUF export supports {', '.join(sorted(ARCHITECTURES))}; this model is {arch}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise GGUFError(f"GGUF export supports the plain rotary embedding; this model uses rope_type "
                        f"{rope.get('rope_type', rope.get('type'))!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise GGUFError(f"GGUF export supports LLaMA layers without biases; this model has {flag}")
    if config.get("sliding_window") and arch == "MistralForCausalLM":
        raise GGUFError("GGUF export does not write sliding-window attention; this model uses it")
    return ARCHITECTURES[arch]


def _heads(config: dict) -> tuple[int, int, int]:
    n_head = config["num_attention_heads"]
    return n_head, config.get("num_key_value_heads") or n_head, config.get("head_dim") or config["hidden_size"] // n_head


def llama_rows(w, n_head: int):
    """Reorder a query/key projection's rows (or LoRA B's) from Hugging Face's rotary layout
    (each head's two halves) to llama.cpp's (neighbouring pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_rows(w, n_head: int):
    """`llama_rows` undone: llama.cpp's row order of a query/key projection back to Hugging Face's."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face LLaMA weight; GGUFError for any it does not know."""
    if hf_name in _TOP:
        return _TOP[hf_name]
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        sub = ".".join(parts[3:-1])
        if sub in _LAYER:
            return f"blk.{parts[2]}.{_LAYER[sub]}.{parts[-1]}"
    raise GGUFError(f"no GGUF name for the weight {hf_name!r} (LLaMA layers only)")


def hf_name(name: str) -> str:
    """`gguf_name` undone: the Hugging Face name of a weight in a file written here."""
    top = {v: k for k, v in _TOP.items()}
    if name in top:
        return top[name]
    parts = name.split(".")
    layer = {v: k for k, v in _LAYER.items()}
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in layer:
        return f"model.layers.{parts[1]}.{layer[parts[2]]}.{parts[3]}"
    raise GGUFError(f"the GGUF tensor {name!r} is not one of a LLaMA model's weights")


def read_tokenizer(tokenizer) -> dict:
    """What GGUF says about a Hugging Face (byte-level BPE) tokenizer: tokens, token kinds,
    merges, special ids, whether BOS/EOS are added, llama.cpp's pre-tokenizer name and the
    chat template."""
    gguf = _gguf()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GGUFError("GGUF export needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise GGUFError(f"GGUF export supports byte-level BPE tokenizers (GPT-2 style); this one is "
                        f"{model.get('type')} with a {(spec.get('decoder') or {}).get('type')} decoder")
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    pre = _pre_name(pre_tokenizer)
    size = len(tokenizer)
    tokens: list = [None] * size
    kinds = [gguf.TokenType.UNUSED] * size
    for text, i in model["vocab"].items():
        if i < size:
            tokens[i], kinds[i] = text, gguf.TokenType.NORMAL
    for added in spec.get("added_tokens") or []:
        if added["id"] < size:
            tokens[added["id"]] = added["content"]
            kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    probe = tokenizer("a")["input_ids"]
    levels = [pre_tokenizer] + list(pre_tokenizer.get("pretokenizers") or [])
    return {"tokens": tokens, "kinds": kinds, "merges": merges, "pre": pre,
            "add_space_prefix": any(p.get("add_prefix_space") for p in levels if p.get("type") == "ByteLevel"),
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
            "pad": tokenizer.pad_token_id,
            "add_bos": tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id],
            "add_eos": tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id],
            "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None}


def _pre_name(pre: dict) -> str:
    def same(want, got):
        if isinstance(want, dict):
            return isinstance(got, dict) and all(same(v, got.get(k)) for k, v in want.items())
        if isinstance(want, list):
            return isinstance(got, list) and len(want) == len(got) and all(map(same, want, got))
        return want == got
    for name, want in _PRE.items():
        if same(want, pre):
            return name
    raise GGUFError(f"GGUF export knows llama.cpp's name for the GPT-2 and SmolLM pre-tokenizers; this "
                    f"tokenizer's is {json.dumps(pre)[:120]}")


def _tensor_type(gguf, name: str, array, qtype, tied: bool):
    T = gguf.GGMLQuantizationType
    if array.ndim <= 1 or name.endswith("_norm.weight"):
        return T.F32
    head = name == "output.weight" or (tied and name == "token_embd.weight")
    if head and qtype in (T.Q4_0, T.Q4_1):
        return T.Q8_0
    return qtype


def write_model(path: str | Path, config: dict, weights, tokenizer, kind: str, name: str = "",
                pre: str | None = None) -> dict:
    """Write `weights` ((Hugging Face name, float32 numpy array) pairs of a LLaMA model
    described by `config`) with `tokenizer` as one GGUF file of type `kind` at `path`.
    `pre`: llama.cpp's pre-tokenizer name where the model's own GGUF says it (the bundled
    model's "smollm"; its converted tokenizer.json describes the same split as "gpt2").
    Returns what was written: size, seconds, tensors per type, and the tensors that fell
    back to F16."""
    gguf = _gguf()
    kind = check_type(kind)
    arch = check_config(config)
    tok = read_tokenizer(tokenizer)
    T = gguf.GGMLQuantizationType
    qtype = T[kind.upper()]
    n_head, n_kv, head_dim = _heads(config)
    tied = bool(config.get("tie_word_embeddings"))
    started = time.perf_counter()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    if name:
        writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta")
                                    or config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(len(tok["tokens"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(getattr(gguf.LlamaFileType, "ALL_F32" if kind == "f32" else f"MOSTLY_{kind.upper()}"))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or tok["pre"])
    writer.add_add_space_prefix(tok["add_space_prefix"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["kinds"])
    writer.add_token_merges(tok["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if tok[key] is not None:
            add(int(tok[key]))
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_eos_token(tok["add_eos"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])
    counts, fallback = Counter(), []
    import numpy as np
    for hf_name, array in weights:
        if tied and hf_name == "lm_head.weight":
            continue   # llama.cpp takes the output head from token_embd when output.weight is absent
        out_name = gguf_name(hf_name)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if hf_name.endswith("q_proj.weight"):
            array = llama_rows(array, n_head)
        elif hf_name.endswith("k_proj.weight"):
            array = llama_rows(array, n_kv)
        t = _tensor_type(gguf, out_name, array, qtype, tied)
        try:
            data = gguf.quants.quantize(array, t)
        except gguf.QuantError:   # rows not a whole number of blocks
            fallback.append(out_name)
            t = T.F16
            data = gguf.quants.quantize(array, t)
        writer.add_tensor(out_name, data, raw_dtype=t)
        counts[t.name] += 1
    _finish(writer)
    return {"path": str(path), "type": kind, "bytes": Path(path).stat().st_size,
            "seconds": time.perf_counter() - started, "tensors": dict(counts), "f16_fallback": fallback}


def write_adapter(path: str | Path, config: dict, adapter: dict, alpha: float) -> dict:
    """Write a PEFT LoRA adapter (its state dict as float32 numpy arrays, keys as PEFT saves
    them) of a LLaMA model described by `config` in llama.cpp's GGUF adapter layout.
    LoRA's A and B are written as they are (not scaled); llama.cpp scales by alpha / r."""
    gguf = _gguf()
    arch = check_config(config)
    n_head, n_kv, _ = _heads(config)
    started = time.perf_counter()
    import numpy as np
    pairs = {}
    for key, array in adapter.items():
        for part, side in ((".lora_A.", "a"), (".lora_B.", "b")):
            if part in key:
                target = key.split(part)[0]
                hf_name = target.split("base_model.model.", 1)[-1] + ".weight"
                pairs.setdefault(hf_name, {})[side] = np.ascontiguousarray(array, dtype=np.float32)
                break
        else:
            raise GGUFError(f"the adapter holds {key!r}, which is not a LoRA A or B matrix "
                            "(GGUF adapters carry LoRA pairs only)")
    if not pairs:
        raise GGUFError("the adapter has no LoRA matrices")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for hf_name, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            raise GGUFError(f"the adapter's {hf_name} has only LoRA {''.join(ab).upper()}")
        out_name = gguf_name(hf_name)
        if out_name == "token_embd.weight" or not out_name.startswith("blk."):
            raise GGUFError(f"GGUF adapters here cover the layers' linear weights; the adapter trains {hf_name}")
        a, b = ab["a"], ab["b"]
        if hf_name.endswith("q_proj.weight"):
            b = llama_rows(b, n_head)
        elif hf_name.endswith("k_proj.weight"):
            b = llama_rows(b, n_kv)
        writer.add_tensor(out_name + ".lora_a", a)
        writer.add_tensor(out_name + ".lora_b", b)
    _finish(writer)
    return {"path": str(path), "type": "lora", "bytes": Path(path).stat().st_size,
            "seconds": time.perf_counter() - started, "tensors": {"F32": 2 * len(pairs)}, "f16_fallback": []}


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _scan(path: str | Path) -> tuple[dict, list]:
    """A GGUF file's scalar metadata and its tensors as (name, type, numpy shape, raw data
    view): what reading a model back needs. gguf.GGUFReader parses every array of the
    metadata into numpy views first, seconds for a 49k-token vocabulary; here arrays are
    stepped over (the layout is the GGUF spec's: header, key/values, tensor infos, aligned data)."""
    import struct

    import numpy as np
    gguf = _gguf()
    V = gguf.GGUFValueType
    fixed = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
             V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
    buf = np.memmap(str(path), dtype=np.uint8, mode="r")
    raw = memoryview(buf)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return value[0]

    def text() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return bytes(raw[pos - n:pos]).decode("utf-8")

    def value(kind: int):
        nonlocal pos
        kind = V(kind)
        if kind == V.STRING:
            return text()
        if kind == V.ARRAY:
            item, count = V(take("I")), take("Q")
            if item == V.STRING:
                for _ in range(count):
                    n = take("Q")   # (not `pos += take(...)`: that reads pos before take moves it)
                    pos += n
            elif item in fixed:
                pos += count * struct.calcsize(fixed[item])
            else:
                for _ in range(count):
                    value(item)
            return None   # arrays (the vocabulary, merges) are not needed to read weights
        return take(fixed[kind])

    try:
        if bytes(raw[:4]) != b"GGUF":
            raise GGUFError(f"{Path(path).name} is not a GGUF file")
        pos = 4
        take("I")   # version
        n_tensors, n_kv = take("Q"), take("Q")
        meta = {}
        for _ in range(n_kv):
            key = text()
            meta[key] = value(take("I"))
        infos = []
        for _ in range(n_tensors):
            name = text()
            dims = [take("Q") for _ in range(take("I"))]
            infos.append((name, gguf.GGMLQuantizationType(take("I")), dims, take("Q")))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise GGUFError(f"{Path(path).name} is not a GGUF file this reader understands ({e})") from e
    align = int(meta.get("general.alignment") or gguf.GGUF_DEFAULT_ALIGNMENT)
    start = -(-pos // align) * align
    tensors = []
    T = gguf.GGMLQuantizationType
    for name, qtype, dims, offset in infos:
        shape = tuple(int(d) for d in reversed(dims))
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape)) * size // block
        data = buf[start + offset:start + offset + n]
        if qtype == T.F32:
            data = data.view(np.float32).reshape(shape)
        elif qtype == T.F16:
            data = data.view(np.float16).reshape(shape)
        else:
            data = data.reshape(gguf.quants.quant_shape_to_byte_shape(shape, qtype))
        tensors.append((name, qtype, shape, data))
    return meta, tensors


def read_weights(path: str | Path, config: dict) -> dict:
    """The weights of a model file written by `write_model`, as a runtime sees them: each
    tensor dequantised to float32 (a 4-bit type's rounding included), named and laid out
    as Hugging Face's (query/key rows back in its rotary order). A tied model's file has no
    output head: "lm_head.weight" is then the token embedding, as llama.cpp takes it."""
    gguf = _gguf()
    n_head, n_kv, _ = _heads(config)
    meta, tensors = _scan(path)
    if meta.get("general.type", "model") != "model":
        raise GGUFError(f"{Path(path).name} is a GGUF {meta['general.type']}, not a model")
    out = {}
    for name, qtype, shape, data in tensors:
        name = hf_name(name)
        array = gguf.quants.dequantize(data, qtype).reshape(shape)
        if name.endswith("q_proj.weight"):
            array = hf_rows(array, n_head)
        elif name.endswith("k_proj.weight"):
            array = hf_rows(array, n_kv)
        out[name] = array.astype("float32")   # a copy: not a view of the file
    if "lm_head.weight" not in out and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def read_adapter(path: str | Path, config: dict) -> tuple[float, dict]:
    """A LoRA adapter file written by `write_adapter`: its alpha and, for each Hugging Face
    weight it changes, (A, B) as float32 in Hugging Face's row order. llama.cpp adds
    (alpha / r) · B·A to the weight, r being A's row count."""
    gguf = _gguf()
    n_head, n_kv, _ = _heads(config)
    meta, tensors = _scan(path)
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise GGUFError(f"{Path(path).name} is not a GGUF LoRA adapter")
    pairs: dict = {}
    for name, qtype, shape, data in tensors:
        stem, side = name.rsplit(".", 1)
        if side not in ("lora_a", "lora_b"):
            raise GGUFError(f"{Path(path).name}: {name!r} is not a LoRA A or B matrix")
        pairs.setdefault(hf_name(stem), {})[side] = gguf.quants.dequantize(data, qtype).reshape(shape).astype("float32")
    out = {}
    for name, ab in pairs.items():
        if set(ab) != {"lora_a", "lora_b"}:
            raise GGUFError(f"{Path(path).name}: {name} has only {', '.join(ab)}")
        b = ab["lora_b"]
        if name.endswith("q_proj.weight"):
            b = hf_rows(b, n_head)
        elif name.endswith("k_proj.weight"):
            b = hf_rows(b, n_kv)
        out[name] = (ab["lora_a"], b)
    return float(meta["adapter.lora.alpha"]), out


def read_back(path: str | Path) -> dict:
    """The metadata of a GGUF file as plain values (token lists as their length) and its
    tensors' types: what tests and the export's summary compare."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        meta[key] = len(value) if isinstance(value, list) and len(value) > 64 else value
    return {"meta": meta, "tensors": {t.name: t.tensor_type.name for t in reader.tensors}}
