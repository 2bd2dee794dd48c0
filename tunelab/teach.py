"""Views that teach each method, measured on real runs: the numbers behind the article's claims.

    compare_methods(["<full run>", "<lora run>", "<qlora run>"])   # params, size, memory, time, loss
    lora_update("<lora run>")            # W' = W + (α/r)·B·A for one layer: shapes, counts, singular values
    nf4_error("smollm2-135m-instruct")   # NF4 quantisation error of one matrix; base memory fp32/bf16/4-bit
    dpo_logps_figure(events)             # chosen/rejected log-probabilities over a DPO run
    token_shift("<run>", prompt)         # base and tuned answers alike; tuned tokens by log p_tuned − log p_base

Everything here reads run folders and model files; nothing trains. The core's plotly
figures come with the numbers as plain dicts/DataFrames, for the app, the notebooks
and the tests alike.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from .lazy import lazy

torch = lazy("torch")  # imported on first use (see lazy.py)

from . import charts, models, runs
from .config import RunConfig
from .runfolder import MODEL_DIR, SUMMARY_FILE, read_json

# --------------------------------------------------------------------------- method comparison

COMPARE_COLUMNS = ["run", "method", "trainable params", "trainable %", "saved MB", "peak memory MB", "minutes",
                   "final loss"]


def compare_methods(run_ids: list[str]) -> pd.DataFrame:
    """One row per run: what trained, what was stored, what it cost, where the loss ended."""
    rows = []
    for ref in run_ids:
        d = runs.find_run(ref)
        s = read_json(d / SUMMARY_FILE)
        cfg = RunConfig.from_yaml(d / "config.yaml")
        method = cfg.method if cfg.method != "dpo" else f"dpo ({cfg.dpo.adapter})"
        rows.append({"run": d.name, "method": method, "trainable params": s.get("trainable_params"),
                     "trainable %": s.get("trainable_pct"), "saved MB": s.get("output_size_mb"),
                     "peak memory MB": s.get("peak_memory_mb"),
                     "minutes": None if s.get("wall_time_s") is None else s["wall_time_s"] / 60,
                     "final loss": s.get("final_loss")})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


COMPARE_HINT = ("Pick two or more finished runs above to compare them, for instance your runs of labs 1 (full), "
                "2 (LoRA) and 3 (QLoRA). Only finished runs are listed: press ↻ Runs after one ends.")


def compare_display(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as people read it: "2.44 M" parameters, "3,953 MB", "2.5 min"."""
    def num(v, fmt):
        return "—" if v is None or pd.isna(v) else fmt.format(v)
    return pd.DataFrame({
        "run": table["run"], "method": table["method"],
        "trainable params": [charts.fmt_count(v) for v in table["trainable params"]],
        "trainable %": [num(v, "{:.2f} %") for v in table["trainable %"]],
        "saved": [charts.fmt_mb(v) for v in table["saved MB"]],
        "peak memory": [charts.fmt_mb(v) for v in table["peak memory MB"]],
        "time": [charts.fmt_minutes(v) for v in table["minutes"]],
        "final loss": [num(v, "{:.3f}") for v in table["final loss"]]})


def compare_figure(table: pd.DataFrame) -> go.Figure:
    """Four small bar charts side by side: trainable parameters (log), stored size, peak
    memory, minutes. One row a run, named in full once at the left (run ids are long: as
    x labels they were cut or turned on their side), each bar labelled with its value."""
    from plotly.subplots import make_subplots
    if table.empty:  # nothing picked yet: say what to pick instead of four empty frames
        fig = go.Figure()
        fig.add_annotation(text=COMPARE_HINT.replace(" for instance", "<br>for instance"), xref="paper",
                           yref="paper", x=0.5, y=0.5, showarrow=False, font=dict(size=13, color="#888"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig.update_layout(template="plotly_white", height=160, margin=dict(l=10, r=10, t=10, b=10))
    panels = [("trainable params", "trainable parameters", charts.fmt_count), ("saved MB", "saved", charts.fmt_mb),
              ("peak memory MB", "peak memory", charts.fmt_mb), ("minutes", "training time", charts.fmt_minutes)]
    fig = make_subplots(rows=1, cols=4, shared_yaxes=True, horizontal_spacing=0.035,
                        subplot_titles=[t for _, t, _ in panels])
    labels = [f"{r} · <b>{m}</b>" for m, r in zip(table["method"], table["run"])]
    for i, (col, title, fmt) in enumerate(panels, start=1):
        values = pd.to_numeric(table[col], errors="coerce")
        fig.add_trace(go.Bar(y=labels, x=values, orientation="h", marker_color=charts.COLORS[i - 1],
                             showlegend=False, text=[fmt(v) for v in values], textposition="outside",
                             cliponaxis=False, hovertemplate=f"%{{y}}<br>{title}: %{{text}}<extra></extra>"),
                      row=1, col=i)
        top = values.max() if values.notna().any() else 1.0
        if i == 1 and values.gt(0).any():  # parameters span 1 M (LoRA) to 100 M+ (full): log
            lo = values[values > 0].min()
            fig.update_xaxes(type="log", range=[math.log10(lo) - 0.5, math.log10(top) + 0.9],
                             **charts.log_ticks(lo / 10, top * 10), row=1, col=i)
        else:  # room right of the longest bar for its label
            fig.update_xaxes(range=[0, (top or 1.0) * 1.45], tickformat=",~g", row=1, col=i)
    fig.update_yaxes(autorange="reversed", automargin=True)  # the table's order, top to bottom
    fig.update_layout(template="plotly_white", height=110 + 34 * len(table), bargap=0.3,
                      margin=dict(l=10, r=20, t=70, b=30),
                      title=dict(text="Methods side by side", x=0.01, font=dict(size=15)))
    return fig


# --------------------------------------------------------------------------- LoRA

def _adapter(run_ref: str) -> tuple[Path, dict, dict[str, torch.Tensor], RunConfig]:
    from safetensors.torch import load_file
    d = runs.find_run(run_ref)
    folder = d / MODEL_DIR
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{d.name} is not an adapter run (no adapter_config.json in {MODEL_DIR}/)")
    return d, json.loads(cfg_file.read_text()), load_file(str(folder / "adapter_model.safetensors")), \
        RunConfig.from_yaml(d / "config.yaml")


def lora_layers(run_ref: str) -> list[str]:
    """The adapted layers of a run, e.g. 'model.layers.0.self_attn.q_proj'."""
    _, _, tensors, _ = _adapter(run_ref)
    return sorted({_layer_name(k) for k in tensors if ".lora_A." in k}, key=_natural)


def _layer_name(key: str) -> str:
    name = key.split(".lora_A.")[0].split(".lora_B.")[0]
    return name.removeprefix("base_model.model.")


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in name.replace(".", " ").split()]


def lora_update(run_ref: str, layer: str | None = None) -> dict:
    """What the adapter of one layer is: A (r×k) and B (d×r), the update ΔW = (α/r)·B·A
    (d×k, rank ≤ r), how many numbers each holds, and ΔW's singular values — how much of
    the change each of its r directions carries. With the base weight W at hand, also
    ‖ΔW‖/‖W‖: how far the tuned layer moved."""
    d, acfg, tensors, cfg = _adapter(run_ref)
    layers = sorted({_layer_name(k) for k in tensors if ".lora_A." in k}, key=_natural)
    layer = layer or next((n for n in layers if n.endswith("q_proj")), layers[0])
    if layer not in layers:
        raise ValueError(f"{d.name}: no adapter on {layer!r}; adapted layers look like {layers[0]!r}")
    a = next(v for k, v in tensors.items() if _layer_name(k) == layer and ".lora_A." in k).float()
    b = next(v for k, v in tensors.items() if _layer_name(k) == layer and ".lora_B." in k).float()
    r, alpha = a.shape[0], float(acfg.get("lora_alpha", a.shape[0]))
    scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
    delta = scale * (b @ a)
    sv = torch.linalg.svdvals(delta)[:r]
    energy = (sv ** 2) / (sv ** 2).sum().clamp_min(1e-30)
    out = {"run": d.name, "layer": layer, "layers": layers, "r": r, "alpha": alpha, "scale": scale,
           "A": list(a.shape), "B": list(b.shape), "W": [b.shape[0], a.shape[1]],
           "params_W": b.shape[0] * a.shape[1], "params_AB": a.numel() + b.numel(),
           "singular_values": sv.tolist(), "energy_top1": float(energy[0]) if len(energy) else 0.0,
           "delta_norm": float(delta.norm())}
    w = _base_weight(cfg.model, layer)
    if w is not None:
        out["rel_change"] = float(delta.norm() / w.float().norm())
    return out


def _base_weight(model: str, layer: str) -> torch.Tensor | None:
    from safetensors import safe_open
    try:
        folder = Path(models.resolve_model(model))
    except models.ModelError:
        return None
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            if f"{layer}.weight" in st.keys():
                return st.get_tensor(f"{layer}.weight")
    return None


def lora_figure(info: dict) -> go.Figure:
    sv = info["singular_values"]
    fig = go.Figure(go.Bar(x=[f"σ{i + 1}" for i in range(len(sv))], y=sv, marker_color=charts.COLORS[0],
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=300, margin=dict(l=55, r=20, t=50, b=40),
                      title=dict(text=f"Singular values of ΔW = (α/r)·B·A — {info['layer']} (r={info['r']})",
                                 x=0.01, font=dict(size=14)), yaxis_title="singular value")
    return fig


def lora_html(info: dict) -> str:
    d, k = info["W"]
    rows = [("W (frozen)", f"{d} × {k}", f"{info['params_W']:,}"),
            ("A (trains)", " × ".join(map(str, info["A"])), f"{info['A'][0] * info['A'][1]:,}"),
            ("B (trains)", " × ".join(map(str, info["B"])), f"{info['B'][0] * info['B'][1]:,}"),
            ("ΔW = (α/r)·B·A", f"{d} × {k}, rank ≤ {info['r']}", f"computed, scale α/r = {info['scale']:g}")]
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in rows)
    extra = (f" The update moved this layer by ‖ΔW‖/‖W‖ = {info['rel_change']:.2%}." if "rel_change" in info else "")
    return (f'<table class="tl-difftable"><tr><th>matrix</th><th>shape</th><th>numbers</th></tr>{body}</table>'
            f'<p class="tl-hint">A and B hold {info["params_AB"]:,} numbers instead of {info["params_W"]:,} '
            f'({info["params_AB"] / info["params_W"]:.2%}). The top direction carries '
            f'{info["energy_top1"]:.0%} of the update\'s energy.{extra}</p>')


# --------------------------------------------------------------------------- QLoRA

def nf4_error(model: str, layer: str | None = None, blocksize: int = 64) -> dict:
    """Quantise one weight matrix to NF4 (bitsandbytes, blocks of `blocksize` with one
    absmax scale each, as QLoRA stores its base), dequantise it back, and measure the
    error; also the whole base's memory in fp32, bf16 and 4-bit (every Linear but the
    LM head in NF4 with double-quantised scales, the rest in bf16)."""
    import bitsandbytes.functional as bnbf
    from safetensors import safe_open
    folder = Path(models.resolve_model(model))
    weights: dict[str, tuple] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                weights[key] = (f, st.get_slice(key).get_shape())
    linear = [k for k, (_, shape) in weights.items() if len(shape) == 2 and k.endswith("proj.weight")]
    if not linear:
        raise ValueError(f"{model}: no projection matrices found to quantise")
    key = f"{layer}.weight" if layer else next((k for k in linear if "q_proj" in k), linear[0])
    if key not in weights:
        raise ValueError(f"{model}: no weight {key!r}")
    with safe_open(str(weights[key][0]), framework="pt") as st:
        w = st.get_tensor(key).float()
    packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    err = (w - bnbf.dequantize_4bit(packed, state).float()).flatten()
    total = sum(math.prod(s) for _, s in weights.values())
    in_linear = sum(math.prod(weights[k][1]) for k in linear)
    # 4 bits a weight, one 8-bit scale per block, plus the fp32 second-level scales (double quantisation).
    nf4_bytes = in_linear * (0.5 + 1 / blocksize + 4 / (blocksize * 256))
    return {"model": model, "layer": key.removesuffix(".weight"), "shape": list(w.shape), "blocksize": blocksize,
            "errors": err, "mean_abs_error": float(err.abs().mean()), "max_abs_error": float(err.abs().max()),
            "mean_abs_weight": float(w.abs().mean()),
            "relative_error": float(err.norm() / w.flatten().norm()),
            "memory_mb": {"fp32": total * 4 / 2**20, "bf16": total * 2 / 2**20,
                          "nf4": (nf4_bytes + (total - in_linear) * 2) / 2**20},
            "quantised_share": in_linear / total}


def nf4_figure(info: dict) -> go.Figure:
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=[f"NF4 error, {info['layer']}", "base model memory"])
    fig.add_trace(go.Histogram(x=info["errors"].numpy(), nbinsx=80, marker_color=charts.COLORS[1],
                               showlegend=False, hovertemplate="error %{x}<br>%{y} weights<extra></extra>"),
                  row=1, col=1)
    mem = info["memory_mb"]
    # The labels sit above the bars: the axis leaves room over the tallest, and they may
    # draw outside the plot area, else its "513 MB" was clipped at the top.
    fig.add_trace(go.Bar(x=list(mem), y=list(mem.values()), marker_color=charts.COLORS[:3], showlegend=False,
                         text=[charts.fmt_mb(v) for v in mem.values()], textposition="outside", cliponaxis=False),
                  row=1, col=2)
    fig.update_xaxes(title_text="w − dequant(quant(w))", row=1, col=1)
    fig.update_yaxes(title_text="weights", row=1, col=1)
    fig.update_yaxes(title_text="MB", range=[0, max(mem.values()) * 1.2], row=1, col=2)
    fig.update_layout(template="plotly_white", height=330, margin=dict(l=55, r=20, t=50, b=45))
    return fig


# --------------------------------------------------------------------------- DPO

def dpo_logps_figure(events: list[dict]) -> go.Figure:
    """The policy's log-probability of the chosen and of the rejected answers over
    training. DPO's loss only cares about their gap relative to the reference, so both
    may fall; what must grow is chosen − rejected (the implicit reward margin)."""
    train = charts.series(events)["train"]
    fig = charts._figure("DPO log-probabilities", "log p(answer)")
    if train.empty or "logps_chosen" not in train:
        return charts._waiting(fig)
    mode = charts._mode(train)
    for col, name, color in (("logps_chosen", "chosen", charts.COLORS[2]),
                             ("logps_rejected", "rejected", charts.COLORS[1])):
        fig.add_trace(go.Scatter(x=train["step"], y=train[col], name=name, mode=mode, line=dict(color=color, width=2)))
    return fig


# --------------------------------------------------------------------------- what tuning changed

# A question the pirate lab does not train on, which the bundled base answers in whole
# sentences and ends by itself (59 tokens). The old default, "How do I boil an egg?" with
# greedy decoding, had the 135M base print "Boil an egg:" until the token limit.
SHIFT_PROMPT = "Why do we need to drink water?"
# Base and tuned answers are drawn alike: SmolLM2's recommended sampling (its model card:
# temperature 0.2, top-p 0.9) with a fixed seed, each in a generate call of its own so both
# draw the same random numbers; a run that did not change the model answers word for word
# as the base does. Greedy decoding loops on a small model: once a line repeats, repeating
# it again is the likeliest continuation.
SHIFT_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "seed": 0}
SHIFT_MAX_NEW_TOKENS = 96
UNCHANGED_NATS = 1e-3  # no token's log-probability moved more than this: the run changed nothing
GREY = "background:#f4f4f5;color:#27272a"


def repeats(text: str, n: int = 4, k: int = 3) -> bool:
    """Whether some run of n words occurs more than k times: an answer stuck in a loop."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return any(grams.count(g) > k for g in set(grams))


def token_shift(run_ref: str, prompt: str = SHIFT_PROMPT, max_new_tokens: int = SHIFT_MAX_NEW_TOKENS,
                answer: str | None = None, arena=None) -> dict:
    """For a prompt, the base's and the tuned model's answers under the same decoding
    (SHIFT_SAMPLING), and for each token of the tuned answer (or of `answer`)
    log p_tuned(token) − log p_base(token): positive = the tuned model finds it more likely.
    Adapter runs score both in one forward pass (the base = adapters off); full runs
    load the base beside the tuned model. `arena`: an Arena whose loaded models to reuse.
    `unchanged`: no token moved by UNCHANGED_NATS, i.e. the run left the model as it was."""
    from .chat import BASE, PEFT_BASE, Arena, Request, Sampling
    run_dir = runs.find_run(run_ref)
    src_key = "run:" + run_dir.name
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    if arena is None or arena.base_model != cfg.model:  # reuse the app's models when the base matches
        arena = Arena(cfg.model)
    msgs = [{"role": "user", "content": prompt}]
    sampling = Sampling(**SHIFT_SAMPLING, max_new_tokens=max_new_tokens)

    def generate(source: str):
        for replies in arena.stream([Request(source, msgs, sampling)]):
            pass
        if replies[0].error:
            raise RuntimeError(replies[0].error)
        return replies[0]

    base = generate(BASE)
    tuned = generate(src_key) if answer is None else None
    answer = tuned.text if tuned else answer
    tuned_entry, spec, _ = arena.resolve(src_key)
    tok = tuned_entry.tokenizer
    prefix = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    p_ids = tok(prefix, add_special_tokens=False, return_tensors="pt").input_ids
    a_ids = tok(answer, add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([p_ids, a_ids], dim=1)
    n = p_ids.shape[1]

    def logps(model, **kw):
        with torch.inference_mode():
            logits = model(input_ids=ids.repeat(len(kw.get("adapter_names", [0])), 1), **kw).logits.float()
        lp = torch.log_softmax(logits[:, n - 1:-1], dim=-1)
        return lp.gather(-1, ids[:, n:].expand(lp.shape[0], -1).unsqueeze(-1)).squeeze(-1)

    with tuned_entry.lock:
        if isinstance(spec, tuple):  # adapter: tuned and base rows in one batch
            name = tuned_entry.adapter_name(*spec)
            both = logps(tuned_entry.model, adapter_names=[name, PEFT_BASE])
            tuned_lp, base_lp = both[0], both[1]
        else:
            tuned_lp = logps(tuned_entry.model)[0]
    if not isinstance(spec, tuple):
        base_entry, _, _ = arena.resolve(BASE)
        with base_entry.lock:
            base_lp = logps(base_entry.model, **({"adapter_names": [PEFT_BASE]} if base_entry.adapters else {}))[0]
    tokens = [tok.decode([t]) for t in a_ids[0].tolist()]
    delta = (tuned_lp - base_lp).tolist()
    biggest = max((abs(d) for d in delta), default=0.0)
    return {"run": run_dir.name, "prompt": prompt, "answer": answer, "tokens": tokens, "delta": delta,
            "tuned_logp": tuned_lp.tolist(), "base_logp": base_lp.tolist(), "base_answer": base.text,
            "sampling": sampling.to_dict(), "max_abs_delta": biggest,
            "unchanged": bool(delta) and biggest < UNCHANGED_NATS,
            "cut": {"base": base.cut, "tuned": bool(tuned) and tuned.cut}}


def token_shift_html(info: dict, clip: float = 4.0) -> str:
    """The base's answer beside the tuned one, each tuned token on a red (less likely than
    base) to green (more likely) background, and how both were decoded."""
    spans = []
    for t, d in zip(info["tokens"], info["delta"]):
        x = max(-1.0, min(1.0, d / clip))
        color = f"rgba(34,197,94,{x:.2f})" if x >= 0 else f"rgba(239,68,68,{-x:.2f})"
        spans.append(f'<span title="{d:+.2f} nats" style="background:{color};border-radius:3px;white-space:pre-wrap">'
                     f'{html.escape(t)}</span>')
    s, cut = info["sampling"], info["cut"]
    more = " …(cut at the token limit)"

    def pane(role: str, body: str, is_cut: bool, look: str) -> str:
        return (f'<div><span class="tl-role">{html.escape(role)}</span><div class="tl-turn" style="max-width:100%;'
                f'margin-left:0;{look}">{body}{more if is_cut else ""}</div></div>')

    # The base in grey: a green bubble would read as shading.
    both = (f'<div class="tl-pair">{pane("base", html.escape(info["base_answer"]), cut["base"], GREY)}'
            f'{pane("tuned · " + info["run"], "".join(spans), cut["tuned"], "border:1px solid #d4d4d8")}</div>')
    how = (f'Both answers: temperature {s["temperature"]:g}, top-p {s["top_p"]:g}, seed {s["seed"]}, '
           f'at most {s["max_new_tokens"]} new tokens.')
    if repeats(info["base_answer"]):
        how += " The base repeats itself on this prompt (small models do on some): try another one."
    if info["unchanged"]:  # a mean of +0.00 would look like a result; say what it means
        return (f'{both}<div class="tl-msg tl-msg-warn">{html.escape(info["run"])} gives every token the '
                f'probability the base gives it (largest shift {info["max_abs_delta"]:.1e} nats): this run has '
                f'not changed the model, so there is nothing to shade. An adapter stays at its zero start when '
                f'a run stops before its first update, or when its updates are zero (a DPO run on pairs whose '
                f'two answers are the same). Pick a run that trained.</div><p class="tl-hint">{how}</p>')
    mean = sum(info["delta"]) / max(1, len(info["delta"]))
    return (f'{both}<p class="tl-hint">Green: the tuned model finds the token more likely than the base does; '
            f'red: less. Mean shift {mean:+.2f} nats a token over {len(info["delta"])} tokens (hover a token for '
            f'its value). {how}</p>')
