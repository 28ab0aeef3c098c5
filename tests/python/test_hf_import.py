"""Hugging Face GPT-2 checkpoints as they come: any head dim (attention on PyTorch's reference where
gptcore's kernels do not take it), sharded folders (safetensors and .bin), and the tokenizer written
beside what `gptcore convert` writes, so `gptcore generate` runs on it."""

import warnings

import pytest
import torch

from gptcore import convert
from gptcore.evaluate import perplexity
from gptcore.generate import Generator
from gptcore.optim import AdamW

transformers = pytest.importorskip("transformers")

VOCAB = 300


def _hf_model(n_embd, n_head, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=n_embd,
        n_layer=2,
        n_head=n_head,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # the training step compared with HF's
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random biases and LN weights too, so a wrong mapping shows
        for p in hf.parameters():
            p.normal_(0.0, 0.08)
    return hf


def _hf_greedy(hf, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return out[0, len(prompt) :].tolist()


# (n_embd, n_head): head dims 16 and 200, which gptcore's attention kernels do not take.
@pytest.mark.parametrize(("n_embd", "n_head"), [(32, 2), (200, 1)], ids=["head16", "head200"])
def test_any_head_dim_imports_runs_generates_and_trains(tmp_path, n_embd, n_head):
    hf = _hf_model(n_embd, n_head)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.warns(UserWarning, match=f"head dim {n_embd // n_head} .* attention on PyTorch's reference"):
        model = convert.from_hf(tmp_path / "hf").eval()
    assert model.config.use_gptcore_ops
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():  # said once, when the model was built: not again at each call
        warnings.simplefilter("error")
        with torch.no_grad():
            torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)
        prompts = [[5, 6, 7], [100, 200, 3, 4, 9]]
        results = Generator(model).generate(prompts, max_new_tokens=10, temperature=0)  # prefill + KV-cache decode
        assert [r.tokens for r in results] == [_hf_greedy(hf, p, 10) for p in prompts]
        assert perplexity(model, idx[0].tolist())["scored_tokens"] == 19

        model.train()
        optimizer = AdamW(model.parameters(), lr=1e-3)
        targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)
        loss = model(idx, targets)[1]
        loss.backward()
    ref = hf(idx, labels=idx)
    ref.loss.backward()
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=1e-5)
    name = "transformer.h.0.attn.c_attn.weight"  # HF's Conv1D holds it as [in, out]
    grad = dict(model.named_parameters())[name].grad
    torch.testing.assert_close(grad, dict(hf.named_parameters())[name].grad.t(), atol=1e-5, rtol=1e-4)
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, before)
