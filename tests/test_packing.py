"""Packing a batch's short rows into shared decoder rows (tunelab/methods/heads.py,
`packed_hidden`): every token keeps the state and gradients it has in the padded batch."""

from __future__ import annotations

import pytest
import torch

from .rows import tiny_model


def test_pack_rows_fills_bins_no_longer_than_the_capacity():
    from tunelab.methods.heads import pack_rows
    lengths = [40, 100, 35, 98, 60, 20, 100, 5]
    bins = pack_rows(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    assert len(bins) == 5                        # 100 | 100 | 98 | 60 + 40 | 35 + 20 + 5
    assert pack_rows([7, 7, 7], 7) == [[0], [1], [2]]
    assert pack_rows([12, 3], 10) == [[0], [1]]   # longer than the capacity: a bin of its own


@pytest.mark.parametrize("longest, attention", [(30, "eager"), (200, "sdpa")])
def test_packed_rows_give_each_row_its_own_states_and_gradients(tiny_model_dir, longest, attention):
    """Short rows sharing a row through the decoder (block-diagonal mask, positions
    restarting) give every real token the hidden state and the gradients it has in the
    padded batch; with eager attention and with SDPA (a packed row longer than 192)."""
    from tunelab.methods import attention as attention_mod
    from tunelab.methods.heads import packed_hidden
    model = tiny_model(tiny_model_dir, ours=True)
    torch.manual_seed(0)
    lengths = torch.tensor([6, longest, 9, longest - 2, 4])
    ids = torch.randint(0, model.config.vocab_size, (5, longest))
    mask = (torch.arange(longest)[None] < lengths[:, None]).long()
    upstream = torch.randn(5, longest, model.config.hidden_size) * mask[..., None]
    results = []
    for packed in (False, True):
        model.zero_grad()
        if packed:
            before = attention_mod.calls()
            hidden = packed_hidden(model, model, ids, mask)
            assert attention_mod.calls()[attention] - before[attention] == model.config.num_hidden_layers
        else:
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        (hidden * upstream).sum().backward()
        results.append((hidden.detach() * mask[..., None], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_packing_runs_the_batch_as_it_is_where_it_cannot_help(tiny_model_dir):
    from tunelab.methods.heads import packed_hidden
    model = tiny_model(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (3, 10))
    right = torch.tensor([[1] * 3 + [0] * 7, [1] * 10, [1] * 4 + [0] * 6])
    assert packed_hidden(model, model, ids, right) is not None
    assert packed_hidden(model, model, ids, torch.ones_like(ids)) is None   # no row saved
    assert packed_hidden(model, model, ids, right.flip(1)) is None          # left padding
    assert packed_hidden(model, model, ids, right * torch.tensor([[1], [1], [0]])) is None
    model.config.sliding_window = 4                                                             # a window
    assert packed_hidden(model, model, ids, right) is None
