"""The answer-only head gives the trainers exactly what TRL's own head gives them:
per-token fields, losses and gradients, for SFT, DPO and KTO."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab import data as data_mod
from tunelab.teach.labs import LABS_DIR

from .rows import tiny_model

PIRATE = LABS_DIR / "data" / "pirate_sft.jsonl"
CONCISE = LABS_DIR / "data" / "concise_dpo.jsonl"
THUMBS = LABS_DIR / "data" / "concise_kto.jsonl"
FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def _kick_lora(model):
    """LoRA's B starts at zero; move it so the adapter changes the output."""
    torch.manual_seed(2)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.02)


def _lora():
    import peft
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


@pytest.mark.parametrize("seq_len,attention", [(12, "eager"), (200, "sdpa")])
def test_fields_match_trl_head(tiny_model_dir, seq_len, attention):
    from trl.trainer.utils import add_fused_lm_head

    from tunelab.methods import attention as attention_mod
    from tunelab.methods.heads import AnswerHead
    theirs, model = tiny_model(tiny_model_dir), tiny_model(tiny_model_dir, ours=True)
    add_fused_lm_head(theirs, outputs=FIELDS)
    ours = AnswerHead(model, outputs=FIELDS)   # handed to TRL's loss code in the model's place
    torch.manual_seed(0)
    ids = torch.randint(0, theirs.config.vocab_size, (3, seq_len))
    att = torch.ones_like(ids)
    att[1, seq_len - 3:] = 0
    labels = ids.masked_fill(att == 0, -100)
    labels[:, :5] = -100
    a = theirs(input_ids=ids, attention_mask=att, labels=labels, fused_lm_head=True)
    before = attention_mod.calls()
    b = ours(input_ids=ids, attention_mask=att, labels=labels, fused_lm_head=True)
    ran = {k: v - before[k] for k, v in attention_mod.calls().items()}
    assert ran[attention] == ours.config.num_hidden_layers and sum(ran.values()) == ran[attention]   # short CPU batches: matmul
    assert torch.equal(a.label_mask, b.label_mask)
    for f in FIELDS:
        torch.testing.assert_close(getattr(b, f), getattr(a, f), rtol=1e-5, atol=1e-5, msg=f)
    torch.testing.assert_close(b.loss, a.loss)
    ga = torch.autograd.grad(a.loss, list(theirs.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.loss, list(model.parameters()), allow_unused=True)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)
    # Without fused_lm_head the model's own forward still runs (generation is unchanged).
    assert ours(input_ids=ids).logits.shape == (3, seq_len, theirs.config.vocab_size)


def test_chunked_scores_match_unchunked():
    from tunelab.methods.heads import answer_scores
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    whole = answer_scores(hidden, head.weight, None, targets, FIELDS, chunk_rows=1000)
    parts = answer_scores(hidden, head.weight, None, targets, FIELDS, chunk_rows=5)
    for f in FIELDS:
        torch.testing.assert_close(parts[f], whole[f], msg=f)
    g_whole = torch.autograd.grad(whole["log_probs"].sum(), [hidden, head.weight])
    g_parts = torch.autograd.grad(parts["log_probs"].sum(), [hidden, head.weight])
    for a, b in zip(g_parts, g_whole):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_head_equals_log_softmax_and_its_autograd(bf16, monkeypatch):
    """The head's own backward (softmax rebuilt block by block from each row's
    log-normaliser) gives what autograd through fp32 log_softmax + gather gives: values,
    metrics and the gradients of the hidden states, the weight and the bias, whole and
    chunked, under bf16 autocast as in fp32; and no rows is no error."""
    from tunelab.methods import heads
    monkeypatch.setattr(heads, "SOFTMAX_ROWS", 3)   # several blocks, the last one short
    torch.manual_seed(0)
    n, dim, vocab = 11, 16, 50
    weight = torch.randn(vocab, dim, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    upstream = torch.randn(n)
    results = []
    for how in ("autograd", "whole", "chunked"):
        hidden = torch.randn(n, dim, generator=torch.Generator().manual_seed(1), requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if how == "autograd":
                logits = torch.nn.functional.linear(hidden, weight, bias).float()
                log_probs = torch.log_softmax(logits, -1)
                probs = log_probs.exp()
                out = {"log_probs": log_probs.gather(1, targets[:, None]).squeeze(1),
                       "entropy": -(probs * log_probs).sum(-1), "mean_logits": logits.mean(-1),
                       "is_top1": logits.argmax(-1) == targets,
                       "log_sum_sq_probs": torch.logsumexp(2 * log_probs, -1)}
            else:
                out = heads.answer_scores(hidden, weight, bias, targets, FIELDS, chunk_rows=4 if how == "chunked" else 99)
        grads = torch.autograd.grad((out["log_probs"] * upstream).sum(), [hidden, weight, bias])
        results.append(({k: v.detach() for k, v in out.items()}, grads))
    (ref, ref_grads), *ours = results
    tol = {"rtol": 2e-2, "atol": 2e-2} if bf16 else {"rtol": 1e-5, "atol": 1e-5}
    for fields, grads in ours:
        for f in FIELDS:
            torch.testing.assert_close(fields[f].float(), ref[f].float(), msg=f, **tol)
        for got, want in zip(grads, ref_grads):
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, **tol)
    empty = heads.answer_scores(torch.zeros(0, dim), weight, bias, targets[:0], FIELDS)
    assert all(empty[f].shape == (0,) for f in FIELDS)


def _trainer_pair(tiny_model_dir, tmp_path, kind, peft_config=None, **config):
    """TRL's trainer and tunelab's, built the same way on 8 rows of the lab data."""
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    from tunelab.methods import heads

    if kind == "sft":
        classes, config_cls, path = (trl.SFTTrainer, heads.sft_trainer_class()), trl.SFTConfig, PIRATE
    elif kind == "kto":
        classes, config_cls, path = (trl.KTOTrainer, heads.kto_trainer_class()), trl.KTOConfig, THUMBS
    else:
        classes, config_cls, path = (trl.DPOTrainer, heads.dpo_trainer_class()), trl.DPOConfig, CONCISE
    _, rows = data_mod.load_examples(path, kind)
    ds = Dataset.from_list(rows[:8])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = []
    for cls in classes:
        torch.manual_seed(0)
        args = config_cls(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=4, report_to="none",
                          use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True, **config)
        out.append(cls(model=tiny_model(tiny_model_dir, ours=cls is not classes[0]), args=args, train_dataset=ds, processing_class=tok,
                       peft_config=peft_config))
    return out


def _sft_trainers(tiny_model_dir, tmp_path, peft_config=None):
    return _trainer_pair(tiny_model_dir, tmp_path, "sft", peft_config, max_length=256, completion_only_loss=True)


def _scored_here(monkeypatch) -> list[int]:
    """How many rows each call of tunelab's answer head scored (so a test sees that its
    trainer really went through it rather than through TRL's head)."""
    from tunelab.methods import heads
    rows, real = [], heads.answer_scores

    def spy(hidden, *args, **kwargs):
        rows.append(hidden.shape[0])
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(heads, "answer_scores", spy)
    return rows


def _packed_here(monkeypatch) -> list[bool]:
    """Whether each call of `packed_hidden` packed its batch (False: it ran as it was)."""
    from tunelab.methods import heads
    packed, real = [], heads.packed_hidden

    def spy(*args):
        hidden = real(*args)
        packed.append(hidden is not None)
        return hidden

    monkeypatch.setattr(heads, "packed_hidden", spy)
    return packed


def _loss_and_grads(trainer, batch, num_items=None):
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(ref, ours):
    (ref_loss, ref_grads), (loss, grads) = ref, ours
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("with_lora", [False, True])
def test_sft_loss_grads_and_metrics_match_trl(tiny_model_dir, tmp_path, monkeypatch, with_lora):
    theirs, ours = _sft_trainers(tiny_model_dir, tmp_path, _lora() if with_lora else None)
    scored = _scored_here(monkeypatch)
    if with_lora:
        _kick_lora(theirs.model)
        _kick_lora(ours.model)
    assert type(ours).__name__ == "AnswerSFTTrainer"
    batch = next(iter(theirs.get_train_dataloader()))
    assert (batch["labels"] != -100).sum() < batch["attention_mask"].sum()  # prompts really are masked
    for num_items in (None, 123):
        ref = _loss_and_grads(theirs, batch, num_items)
        assert not scored
        _assert_same(ref, _loss_and_grads(ours, batch, num_items))
        assert scored.pop() == int((batch["labels"][:, 1:] != -100).sum())   # the answer tokens only
    m_theirs, m_ours = theirs._metrics["train"], ours._metrics["train"]
    assert m_ours["num_tokens"] == m_theirs["num_tokens"]
    assert m_ours["mean_token_accuracy"] == pytest.approx(m_theirs["mean_token_accuracy"], rel=1e-5)
    ours.log({"loss": 1.0})   # the entropy is not computed, so it is not logged
    assert "entropy" not in ours.state.log_history[-1] and "mean_token_accuracy" in ours.state.log_history[-1]


@pytest.mark.parametrize("kind, precompute, columns, metric_abs", [
    ("dpo", True, ("ref_chosen_logps", "ref_rejected_logps"), 1e-5),
    # KTO's KL estimate is a difference of sums over ~100 tokens: fp32 gives it ~1e-4
    ("kto", True, ("ref_logps", "ref_KL_logps"), 1e-4),
    ("kto", False, (), 1e-4),
])
def test_preference_reference_loss_grads_and_metrics_match_trl(tiny_model_dir, tmp_path, monkeypatch, kind, precompute,
                                                               columns, metric_abs):
    """DPO and KTO call the head for the answers, for the reference (precomputed or every
    step) and KTO for its KL estimate's mismatched answers: every one of them through
    tunelab's head gives TRL's numbers; KTO's with its short answers packed together."""
    packed = _packed_here(monkeypatch)
    scored = _scored_here(monkeypatch)
    trainers = _trainer_pair(tiny_model_dir, tmp_path, kind, _lora(), max_length=128,
                             precompute_ref_log_probs=precompute)
    theirs, ours = trainers
    for col in columns:   # precomputed through each head
        torch.testing.assert_close(torch.tensor(ours.train_dataset[col]), torch.tensor(theirs.train_dataset[col]),
                                   rtol=1e-5, atol=1e-4)
    for tr in trainers:
        _kick_lora(tr.model)
    assert bool(scored) == precompute   # the reference log-probs came through the answer head
    batch = next(iter(theirs.get_train_dataloader()))
    ref = _loss_and_grads(theirs, batch)
    scored.clear()
    _assert_same(ref, _loss_and_grads(ours, batch))
    assert scored   # and so did the loss
    m_theirs, m_ours = theirs._metrics["train"], ours._metrics["train"]
    assert m_ours.keys() == m_theirs.keys() and (kind != "kto" or "kl" in m_ours)
    for k in m_theirs:
        assert m_ours[k] == pytest.approx(m_theirs[k], rel=1e-4, abs=metric_abs), k
    assert any(packed) == (kind == "kto")   # thumbs-up answers are brief, thumbs-down ones long


def test_padding_leaves_each_examples_loss_unchanged(tiny_model_dir, tmp_path):
    """Length grouping only changes which examples share a batch: an example's loss in a
    right-padded batch (TRL's collator) equals its loss alone, with no padding at all."""
    from tunelab.methods.heads import AnswerHead
    theirs, _ = _sft_trainers(tiny_model_dir, tmp_path)
    batch = next(iter(theirs.get_train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max()   # the batch really has padding
    model = AnswerHead(tiny_model(tiny_model_dir, ours=True).eval())
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"], fused_lm_head=True).log_probs
        for i, n in enumerate(lengths.tolist()):
            alone = model(input_ids=batch["input_ids"][i:i + 1, :n], labels=batch["labels"][i:i + 1, :n],
                          fused_lm_head=True).log_probs
            assert alone.abs().sum() > 0
            torch.testing.assert_close(padded[i, :n - 1], alone[0], rtol=1e-5, atol=1e-5)
            assert not padded[i, n - 1:].any()


@pytest.mark.parametrize("method,data", [("lora", PIRATE), ("dpo", CONCISE)])
def test_runs_train_through_the_answer_head(tiny_model_dir, method, data):
    from tunelab import RunConfig, run
    cfg = RunConfig.from_dict({"method": method, "model": tiny_model_dir, "data": {"train": str(data)},
                               "train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1}})
    assert cfg.train.group_by_length and cfg.lora.dropout == 0.0 and cfg.dpo.precompute_ref
    result = run(cfg)
    assert result.status == "finished" and result.summary["final_loss"] > 0
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    assert steps and all(0 <= e.get("token_accuracy", 0) <= 1 for e in steps)


def test_attention_choice_by_length_and_kept_memory():
    from tunelab.methods.attention import choice
    layers, heads = 30, 9   # SmolLM2-135M
    for rows, length, want in [(8, 90, "eager"),      # a lab's SFT batch: ~105 MB of attention weights
                               (16, 190, "eager"),    # a DPO batch (8 pairs): ~940 MB
                               (32, 190, "sdpa"),     # twice that: ~1.9 GB would be kept
                               (1, 256, "sdpa")]:     # long: the fused kernel is faster
        assert choice(rows, heads, length, length, layers, "cpu") == want, (rows, length)
    assert choice(8, heads, 90, 90, layers, "cuda") == "sdpa"    # a GPU: the library's kernel
    assert choice(8, heads, 1, 90, layers, "cpu") == "sdpa"      # a decode step against a cache


def test_the_registered_attention_gives_eager_and_sdpa_results(tiny_model_dir, tmp_path):
    """A model loaded with the registered attention computes what the same model loaded with
    transformers' eager attention computes on a short padded batch, and what SDPA computes on
    a long one, logits and gradients; a model saved from it names no attention of ours."""
    import json

    from tunelab.methods import attention
    ours = tiny_model(tiny_model_dir, ours=True)
    torch.manual_seed(0)
    for length, reference in [(20, "eager"), (attention.EAGER_MAX_LEN + 8, "sdpa")]:
        theirs = tiny_model(tiny_model_dir)
        theirs.set_attn_implementation(reference)
        ids = torch.randint(0, ours.config.vocab_size, (3, length))
        mask = torch.ones_like(ids)
        mask[1, length - 5:] = 0
        results = []
        for model in (theirs, ours):
            model.zero_grad()
            before = attention.calls()
            logits = model(input_ids=ids, attention_mask=mask).logits
            (logits * mask[..., None]).square().mean().backward()
            results.append((logits.detach(), [p.grad.clone() for p in model.parameters()], attention.calls()[reference] - before[reference]))
        (want, want_grads, _), (got, got_grads, ran) = results
        assert ran == ours.config.num_hidden_layers
        torch.testing.assert_close(got * mask[..., None], want * mask[..., None], rtol=1e-5, atol=1e-5)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    ours.save_pretrained(tmp_path / "saved")
    assert attention.NAME not in (tmp_path / "saved" / "config.json").read_text()
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "llama"


def test_length_grouped_order_comes_from_the_seed_and_epoch_not_the_global_rng():
    # A resumed run restores the global RNG as it was at the checkpoint, after its epoch's
    # order was drawn: the order must come from (seed, epoch) to match an uninterrupted run.
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from tunelab.methods.heads import epoch_seeded
    lengths = [5, 9, 2, 7, 3, 8, 1, 6, 4, 10, 12, 11] * 8
    sampler = epoch_seeded(LengthGroupedSampler(4, lengths=lengths), seed=42)
    orders = {}
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch * 1000 + 7)        # whatever the global RNG holds
        first = list(sampler)
        torch.manual_seed(123)
        assert list(sampler) == first
        orders[epoch] = first
    assert orders[0] != orders[1] != orders[2]
    assert sorted(orders[1]) == list(range(len(lengths)))
    plain = torch.utils.data.RandomSampler(range(4))
    assert epoch_seeded(plain, seed=42) is plain     # accelerate seeds that one already


@pytest.mark.parametrize("bf16,attention", [(False, "eager"), (False, "sdpa"), (True, "eager")])
def test_orpo_scored_positions_give_trls_loss_grads_and_metrics(tiny_model_dir, tmp_path, monkeypatch, bf16, attention):
    """ORPO runs each pair as one row (the shared prompt once, both answers, the rejected one
    masked from the chosen one) and scores only the positions its loss reads
    (tunelab/methods/orpo.py): the same loss, gradients and logged metrics as TRL's
    ORPOTrainer, which runs both whole sequences and scores every position; with eager
    attention and with SDPA (the packed rows' own 4D mask); under bf16 autocast (as a run on a CPU
    with native bf16 trains) the same to bf16's precision, with LoRA's own input casts off
    as tunelab's runs have them."""
    from tunelab.methods import attention as attention_mod
    if attention == "sdpa":
        monkeypatch.setattr(attention_mod, "EAGER_MAX_LEN", 0)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from tunelab.methods import orpo

    _, rows = data_mod.load_examples(CONCISE, "dpo")
    ds = Dataset.from_list(rows[:8])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainers = []
    for cls in (ORPOTrainer, orpo.trainer_class()):
        torch.manual_seed(0)
        args = ORPOConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=4, report_to="none",
                          use_cpu=True, bf16=bf16, gradient_checkpointing=False, disable_tqdm=True, max_length=128,
                          beta=0.1)
        model = tiny_model(tiny_model_dir, ours=cls is not ORPOTrainer).to(torch.bfloat16 if bf16 else torch.float32)   # bf16: the base as lora.load keeps it
        trainers.append(cls(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=_lora()))
    theirs, ours = trainers
    for tr in trainers:
        _kick_lora(tr.model)
    if bf16:
        from tunelab.methods.lora import skip_input_casts
        skip_input_casts(ours.model)
    batch = next(iter(theirs.get_train_dataloader()))
    assert (batch["chosen_attention_mask"].sum(1) < batch["chosen_attention_mask"].shape[1]).any()   # padded rows
    shared = orpo.shared_prompt(batch)
    assert (shared > 0).all() and len(set(shared.tolist())) > 1   # prompts of several lengths: the rejected answers start at different columns
    ref, mine = _loss_and_grads(theirs, batch), _loss_and_grads(ours, batch)
    if bf16:   # bf16 rounds the two paths' products differently: the loss agrees to bf16's precision
        torch.testing.assert_close(mine[0], ref[0], rtol=2e-2, atol=2e-2)
        assert mine[1].keys() == ref[1].keys() and all(g.isfinite().all() for g in mine[1].values())
        return
    assert orpo.scored_forward(ours, ours.model, batch) is not None   # the fast path really runs here
    _assert_same(ref, mine)
    m_theirs, m_ours = theirs._stored_metrics["train"], ours._stored_metrics["train"]
    assert m_ours.keys() == m_theirs.keys() and "log_odds_chosen" in m_ours
    for k in m_theirs:
        if not k.startswith("logits/"):
            assert m_ours[k][-1] == pytest.approx(m_theirs[k][-1], rel=1e-4, abs=1e-4), k
    # The mean logit of each side, over its real tokens (TRL's also averages the padding's).
    model = ours.model.eval()
    for side in ("chosen", "rejected"):
        ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        expected = logits[mask[:, 1:] == 1].mean()
        assert m_ours[f"logits/{side}"][-1] == pytest.approx(float(expected), rel=1e-4, abs=1e-4), side


@pytest.mark.parametrize("method,data", [("lora", PIRATE), ("kto", THUMBS), ("orpo", CONCISE)])
def test_each_speed_piece_turns_off_to_the_librarys_own_path(tiny_model_dir, monkeypatch, method, data):
    """With `speed:` all off a run trains through TRL's head, TRL's padded rows and SDPA:
    tunelab's answer head scores nothing, nothing is packed, our attention never runs; with
    the defaults each of them does."""
    from tunelab import RunConfig, run
    from tunelab.methods import attention
    packed = _packed_here(monkeypatch)
    scored = _scored_here(monkeypatch)
    for on in (False, True):
        scored.clear()
        packed.clear()
        before = sum(attention.calls().values())
        cfg = RunConfig.from_dict({"method": method, "model": tiny_model_dir,
                                   "data": {"train": str(data), "eval_fraction": 0.0},
                                   "train": {"max_steps": 1, "batch_size": 4, "logging_steps": 1},
                                   "speed": {"answer_head": on, "pack_rows": on, "short_attention": on},
                                   "kto": {"precompute_ref": False}})   # not a pass over all the data first
        assert run(cfg).status == "finished"
        assert bool(scored) == on and (sum(attention.calls().values()) > before) == on
        assert any(packed) == (on and method == "kto")
