"""CPU inference on oneDNN-packed linear layers (llama2ft/model/cpu_linear.py, `cpu_linear=`): the packed
model computes what the unpacked one does, batched greedy answers still equal solo ones, adapters and
their base layers stay as peft made them, the unpacked weights are released, and the loader packs on
`auto`, not on `torch`, and refuses `onednn` where it cannot apply before loading anything."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import Turn
from llama2ft.inference.loader import load_chat_model
from llama2ft.inference.model_choice import ModelSource, ModelSpec
from llama2ft.model.cpu_linear import PackedLinear, onednn_works, pack_for_cpu, pack_linears
from test_batching import QUESTIONS, batched, chat_on, greedy, solo_answers, tiny_model

pytestmark = pytest.mark.skipif(not onednn_works(torch.float32), reason="this PyTorch build has no oneDNN")


def linears(model: nn.Module, kind: type) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is kind]


def test_packed_model_computes_what_the_unpacked_one_does(tokenizer):
    model = tiny_model(tokenizer)
    ids = torch.tensor([tokenizer.encode("数字 680 的中文读法是什么？")])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        plain = len(linears(model, nn.Linear))
        assert pack_linears(model) == plain == 2 * 7 + 1  # q k v o gate up down per layer, and the head
        after = model(input_ids=ids).logits
    assert not linears(model, nn.Linear) and len(linears(model, PackedLinear)) == plain
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)
    # The float weights went with the nn.Linear layers: only the embedding and the norms remain parameters.
    assert {n.split(".")[-2] for n, _ in model.named_parameters()} <= {"embed_tokens", "norm", "input_layernorm",
                                                                     "post_attention_layernorm"}


def test_packed_layers_refuse_to_train(tokenizer):
    model = tiny_model(tokenizer)
    pack_linears(model)
    x = torch.randn(2, model.config.hidden_size, requires_grad=True)
    with pytest.raises(RuntimeError, match="for inference"):
        model.model.layers[0].self_attn.q_proj(x)


@pytest.mark.parametrize("tok", ["embedded", "llama2"])
def test_greedy_answers_in_a_batch_equal_the_answers_alone_when_packed(request, tok):
    tokenizer = request.getfixturevalue("tokenizer" if tok == "embedded" else "real_tokenizer")
    model = tiny_model(tokenizer)
    requests = [(q, greedy(n)) for q, n in zip(QUESTIONS, [24, 6, 17, 30, 9, 12])]
    unpacked = solo_answers(model, tokenizer, requests)
    assert pack_for_cpu(model) > 0
    chat = chat_on(model, tokenizer, max_batch=4)
    together = batched(chat, requests)
    assert chat._batcher.most == 4
    chat.close()
    assert together == solo_answers(model, tokenizer, requests) == unpacked


def test_an_adapter_keeps_its_layers_and_the_rest_is_packed(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(tokenizer)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    ids = torch.tensor([tokenizer.encode("你好")])
    with torch.no_grad():
        before = peft_model(input_ids=ids).logits
        pack_linears(peft_model)
        after = peft_model(input_ids=ids).logits
    plain = linears(peft_model, nn.Linear)
    assert plain and all("lora_" in n or n.endswith("base_layer") for n in plain)
    assert sum(n.endswith("base_layer") for n in plain) == 4  # q and v of both layers: peft merges into them
    assert any(n.endswith("mlp.down_proj") for n in linears(peft_model, PackedLinear))
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model(tokenizer).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_the_loader_packs_on_auto_and_not_on_torch(model_dir):
    packed = load_chat_model(ModelSpec(model=ModelSource(str(model_dir))))
    plain = load_chat_model(ModelSpec(model=ModelSource(str(model_dir)), cpu_linear="torch"))
    assert linears(packed.model, PackedLinear) and not linears(packed.model, nn.Linear)
    assert linears(plain.model, nn.Linear) and not linears(plain.model, PackedLinear)
    ask = [Turn("human", "数字 680 的中文读法是什么？")]
    assert packed.chat(ask, greedy(12)).text == plain.chat(ask, greedy(12)).text
    packed.close()
    plain.close()


def test_impossible_cpu_linear_values_fail_before_loading(model_dir, monkeypatch):
    import llama2ft.inference.loader as loader

    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match=r"cpu_linear='fast': must be one of auto, onednn, torch"):
        load_chat_model(ModelSpec(model=ModelSource(str(model_dir)), cpu_linear="fast"))
    with pytest.raises(UserError, match="cpu_linear=onednn packs full-precision weights; quant=nf4"):
        load_chat_model(ModelSpec(model=ModelSource(str(model_dir)), cpu_linear="onednn", quant="nf4"))
    with pytest.raises(UserError, match="cpu_linear=onednn is for CPU inference; this model loads on cuda"):
        loader._check_onednn("cuda", torch.float32, "none")
