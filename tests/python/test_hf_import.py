"""Hugging Face GPT-2 checkpoints as they come: any head dim (attention on PyTorch's reference where
gptcore's kernels do not take it), sharded folders (safetensors and .bin), and the tokenizer written
beside what `gptcore convert` writes, so `gptcore generate` runs on it."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from gptcore import cli, convert
from gptcore.checkpoint import TOKENIZER_DIR, load_for_inference, save_model
from gptcore.data import load_tokenizer
from gptcore.evaluate import perplexity
from gptcore.finetune.lora import LoRAConfig, apply_lora, save_adapters
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


# ---- sharded folders, and the tokenizer beside what `gptcore convert` writes -------------------------

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 20


def _hf_tokenizer(folder):
    """A byte-level BPE of VOCAB ids saved as GPT2TokenizerFast saves one (tokenizer.json, vocab.json,
    merges.txt, tokenizer_config.json)."""
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=VOCAB, min_frequency=1, special_tokens=["<|endoftext|>"])
    transformers.GPT2TokenizerFast(tokenizer_object=bpe._tokenizer).save_pretrained(folder)
    return folder


def _as_bin_shards(folder):
    """A folder's safetensors shards rewritten as transformers 4's safe_serialization=False writes them:
    pytorch_model-0000i-of-0000n.bin (torch.save of each shard's dict) + pytorch_model.bin.index.json."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    names = {}
    for shard in sorted(set(index["weight_map"].values())):
        names[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(folder / shard), folder / names[shard])
        (folder / shard).unlink()
    index["weight_map"] = {k: names[v] for k, v in index["weight_map"].items()}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors.index.json").unlink()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """{safe_serialization: an HF folder of a GPT-2 in shards, with its tokenizer}, and the model."""
    hf = _hf_model(64, 2)
    folders = {}
    for safe in (True, False):
        folder = tmp_path_factory.mktemp(f"hf_safe{safe}")
        hf.save_pretrained(folder, max_shard_size="100KB", safe_serialization=safe)
        if not safe and (folder / "model.safetensors.index.json").is_file():
            _as_bin_shards(folder)  # transformers 5 writes safetensors whatever safe_serialization says
        _hf_tokenizer(folder)
        folders[safe] = folder
    return folders, hf


def _generate(capsys, checkpoint):
    capsys.readouterr()
    argv = ["--checkpoint", str(checkpoint), "--prompt", "To be", "--max-new-tokens", "6", "--temperature", "0"]
    code = cli.main(["generate", *argv, "--ignore-eos"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_hf_folder_imports(sharded, safe, tmp_path, capsys):
    folders, hf = sharded
    folder = folders[safe]
    index = folder / ("model.safetensors.index.json" if safe else "pytorch_model.bin.index.json")
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    assert not (folder / "model.safetensors").exists() and not (folder / "pytorch_model.bin").exists()
    model = convert.from_hf(folder).eval()
    idx = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)

    out = tmp_path / "model.safetensors"
    assert cli.main(["convert", "hf-import", "--hf-dir", str(folder), "--out", str(out)]) == 0
    assert f"tokenizer from {folder}" in capsys.readouterr().out
    assert (out.parent / TOKENIZER_DIR / "tokenizer.json").is_file()
    assert _generate(capsys, out) == _generate(capsys, folder)


def test_hf_export_and_merge_lora_write_the_tokenizer(sharded, tmp_path, capsys):
    folders, hf = sharded
    tokenizer = load_tokenizer(folders[True])
    model, _ = load_for_inference(folders[True])
    (tmp_path / "base").mkdir()
    save_model(model, tmp_path / "base" / "model.safetensors")  # a model file with no tokenizer beside it
    assert cli.main(["convert", "hf-export", "--checkpoint", str(tmp_path / "base" / "model.safetensors"),
                     "--out", str(tmp_path / "bare")]) == 0  # fmt: skip
    assert "no tokenizer found: give --tokenizer" in capsys.readouterr().out

    exported = tmp_path / "hf"
    argv = ["--checkpoint", str(tmp_path / "base" / "model.safetensors"), "--tokenizer", str(folders[True])]
    assert cli.main(["convert", "hf-export", *argv, "--out", str(exported)]) == 0
    auto = transformers.AutoTokenizer.from_pretrained(exported)
    assert auto(TEXT[:80])["input_ids"] == tokenizer.encode(TEXT[:80])
    assert auto.eos_token == "<|endoftext|>" and len(auto) == VOCAB
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    idx = torch.tensor([tokenizer.encode("To be")])
    torch.testing.assert_close(reloaded(idx).logits, hf(idx).logits, atol=1e-5, rtol=1e-5)
    expected = _generate(capsys, folders[True])
    assert _generate(capsys, exported) == expected

    lora = LoRAConfig(2)  # zero B: merged, the model is the base
    apply_lora(model, lora)
    save_adapters(model, tmp_path / "adapters.safetensors", lora)
    merged = tmp_path / "merged" / "model.safetensors"
    merged.parent.mkdir()
    argv = ["--checkpoint", str(exported), "--lora", str(tmp_path / "adapters.safetensors")]
    assert cli.main(["convert", "merge-lora", *argv, "--out", str(merged)]) == 0
    assert (merged.parent / TOKENIZER_DIR / "tokenizer.json").is_file()
    capsys.readouterr()
    assert _generate(capsys, merged) == expected


class NotTensors:  # what a pickled checkpoint could hold beyond tensors
    pass


def test_sharded_folder_errors(sharded, tmp_path, capsys):
    folders, _ = sharded
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folders[True].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    shard.unlink()
    assert cli.main(["convert", "hf-import", "--hf-dir", str(broken), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    named = "named by model.safetensors.index.json are missing"
    assert err == f"gptcore convert: error: {broken}: shard(s) {shard.name} {named}\n"

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folders[True] / "config.json").read_text())
    torch.save({"transformer.wte.weight": torch.zeros(2), "extra": NotTensors()}, pickled / "pytorch_model.bin")
    assert cli.main(["convert", "hf-import", "--hf-dir", str(pickled), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gptcore convert: error: {pickled / 'pytorch_model.bin'}: holds more than tensors")
    assert err.count("\n") == 1
