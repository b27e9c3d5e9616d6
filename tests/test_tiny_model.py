"""The tiny-model fixture the later stages' tests build on: offline, small, loadable by transformers."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_loads_and_runs_offline(tiny_model_dir):
    assert (tiny_model_dir / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.num_hidden_layers == 2 and 32 <= model.config.hidden_size <= 64
    assert sum(p.numel() for p in model.parameters()) < 200_000

    ids = tokenizer("the film was fresh", return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == "the film was fresh"
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_model_has_chat_template_and_plain_variant_has_none(
    tiny_model_dir, tiny_plain_model_dir
):
    chat = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = chat.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert AutoTokenizer.from_pretrained(tiny_plain_model_dir).chat_template is None
