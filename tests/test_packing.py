"""Packing is exact: the packed forward pass gives the same per-token losses and LoRA gradients as
running each sample alone (float32, within 1e-5)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama2ft.data.collators import PackedCollator
from llama2ft.data.packing import pack_bins, pack_columns
from llama2ft.data.templates import IGNORE_INDEX
from llama2ft.model.attention import packed_row_multiple


def test_pack_bins_fills_without_overflow():
    lengths = [5, 9, 3, 7, 2, 10, 1, 6]
    bins = pack_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == -(-sum(lengths) // 10)  # optimal here: 43 tokens in 5 rows


def test_packed_columns_reset_positions_and_mask_boundaries():
    cols = pack_columns([[1, 5, 6], [1, 7]], [[1, 5, 6], [1, 7]], capacity=8)
    assert cols["input_ids"] == [[1, 5, 6, 1, 7]]
    assert cols["seq_lens"] == [[3, 2]]
    assert cols["labels"] == [[IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7]]
    batch = PackedCollator(0)([dict(zip(cols, vals)) for vals in zip(*cols.values())])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]  # padded to 8: padding is its own run
    assert "attention_mask" not in batch


def tiny_lora_model(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).float()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"]))
    model.config.use_cache = False
    return model


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss of each label position (shifted as causal LMs do); 0 where ignored."""
    shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return loss.view(shift_labels.shape)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "llama2ft_varlen_sdpa"])
def test_packed_losses_and_grads_equal_separate_runs(attn):
    from llama2ft.model.attention import register

    register()
    gen = torch.Generator().manual_seed(1)
    lengths = [7, 19, 3, 12, 25]
    samples = [torch.randint(3, 96, (n,), generator=gen).tolist() for n in lengths]
    labels = [[IGNORE_INDEX] * (n // 2) + s[n // 2:] for s, n in zip(samples, lengths)]

    model = tiny_lora_model()
    model.base_model.model.config._attn_implementation = attn
    # each sample alone
    alone_losses = []
    for ids, labs in zip(samples, labels):
        out = model(input_ids=torch.tensor([ids]))
        alone_losses.append(per_token_loss(out.logits, torch.tensor([labs]))[0])
    total_alone = sum(loss.sum() for loss in alone_losses)
    total_alone.backward()
    grads_alone = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    # packed into two rows of capacity 40, padded by the collator
    cols = pack_columns(samples, labels, capacity=40)
    batch = PackedCollator(pad_token_id=0)([{k: cols[k][i] for k in cols} for i in range(len(cols["input_ids"]))])
    assert batch["input_ids"].shape[0] < len(samples)
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    packed = per_token_loss(out.logits, batch["labels"])
    packed.sum().backward()
    grads_packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    # match each sample's trained-token losses inside the packed rows
    expected = sorted(round(v, 4) for loss in alone_losses for v in loss[loss > 0].tolist())
    got_tensor = packed[batch["labels"][..., 1:] != IGNORE_INDEX]
    alone_flat = torch.cat([loss[torch.tensor(labs[1:]) != IGNORE_INDEX] for loss, labs in zip(alone_losses,
                                                                                                 labels)])
    assert got_tensor.numel() == alone_flat.numel()
    assert torch.allclose(got_tensor.sort().values, alone_flat.sort().values, atol=1e-5, rtol=0)
    assert len(expected) == got_tensor.numel()
    for name, grad in grads_alone.items():
        assert torch.allclose(grads_packed[name], grad, atol=1e-5, rtol=1e-4), name


def test_naive_packing_would_differ():
    """The check above can fail: without position resets samples attend to each other."""
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randint(3, 96, (10,), generator=gen), torch.randint(3, 96, (10,), generator=gen)
    model = tiny_lora_model()
    alone = model(input_ids=b[None]).logits[0]
    naive = model(input_ids=torch.cat([a, b])[None]).logits[0, 10:]
    packed = model(input_ids=torch.cat([a, b])[None],
                   position_ids=torch.tensor([list(range(10)) * 2])).logits[0, 10:]
    assert not torch.allclose(naive, alone, atol=1e-3)
    assert torch.allclose(packed, alone, atol=1e-5)


def test_varlen_attention_falls_back_for_generation_with_padding():
    """Outside packed training (KV cache, left padding) the varlen attention is plain SDPA."""
    from llama2ft.model.attention import register

    model = tiny_lora_model().base_model.model
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    model.config._attn_implementation = "sdpa"
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    model.config._attn_implementation = register()
    got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(ref, got)


@pytest.mark.slow
def test_flex_attention_packed_losses_equal_separate_runs():
    """FlexAttention, the GPU's choice for packed rows (model.attention.packed_attention), takes its block mask
    from the packed position_ids: the losses equal each sample run alone. Forward only: torch has no flex
    backward on CPU (the GPU script checks training). The rows are padded as training pads them for flex
    (`packed_row_multiple`: whole 128-token blocks). Unpadded 40-token rows give NaN or wrong losses for
    some samples on AVX2 CPUs (flex's CPU kernel with a partial block; AVX512 is exact either way), which
    training never feeds it; the padding is checked on its own below."""
    gen = torch.Generator().manual_seed(3)
    lengths = [7, 19, 3, 12, 25]
    samples = [torch.randint(3, 96, (n,), generator=gen).tolist() for n in lengths]
    model = tiny_lora_model().base_model.model
    with torch.no_grad():
        alone = torch.cat([per_token_loss(model(input_ids=torch.tensor([s])).logits, torch.tensor([s]))[0]
                           for s in samples])
        cols = pack_columns(samples, samples, capacity=40)
        batch = PackedCollator(0, packed_row_multiple("flex_attention"))(
            [{k: cols[k][i] for k in cols} for i in range(len(cols["input_ids"]))])
        model.config._attn_implementation = "flex_attention"
        packed = per_token_loss(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits,
                                batch["labels"])
    got = packed[batch["labels"][..., 1:] != IGNORE_INDEX]
    assert got.numel() == alone.numel()
    assert torch.allclose(got.sort().values, alone.sort().values, atol=1e-5, rtol=0)


def test_flex_rows_are_padded_to_whole_blocks():
    """What keeps flex exact on every CPU kind: its packed batches are whole 128-token blocks."""
    cols = pack_columns([[5] * 7, [6] * 19], [[5] * 7, [6] * 19], capacity=40)
    batch = PackedCollator(0, packed_row_multiple("flex_attention"))([{k: cols[k][0] for k in cols}])
    assert batch["input_ids"].shape[1] == 128
    assert batch["position_ids"][0, 26:].tolist() == list(range(102))  # the padding is its own run
    assert packed_row_multiple("sdpa") == 8
