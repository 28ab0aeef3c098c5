"""LoRA: a fresh adapter leaves the model unchanged, merge/unmerge against the unmerged forward,
only adapters train and get saved, targets, dropout, errors, pipeline stages, tp2 (with and
without sequence parallelism) against the single-process LoRA model, and `generate --lora`."""

import copy

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from gptcore import cli
from gptcore.checkpoint import load_for_inference, load_model, save_model
from gptcore.data import train_sentencepiece
from gptcore.finetune.lora import (
    TARGETS,
    LoRAConfig,
    LoRALinear,
    apply_adapters,
    apply_lora,
    load_adapters,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    save_adapter_state,
    save_adapters,
    unmerge_lora,
)
from gptcore.generate import Generator
from gptcore.model import GPT, GPTConfig
from gptcore.parallel import parallelize, pipeline_stage
from gptcore.parallel.tensor_parallel import (
    gather_full_state_dict,
    merge_state_dicts,
    reduce_sequence_parallel_grads,
    shard_state_dict,
)
from gptcore.parallel.testing import run_distributed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**overrides) -> GPTConfig:
    fields = dict(vocab_size=200, n_positions=32, n_layer=2, n_head=2, n_embd=64)
    return GPTConfig(**(fields | overrides))


def _base(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(_config(**overrides)).eval()


def _ids(seq_len=12, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 200, (batch, seq_len), generator=g), torch.randint(0, 200, (batch, seq_len), generator=g)


@torch.no_grad()
def _randomize_B(model, seed=2, std=0.1):
    """Nonzero B factors, the same whatever the model's layout for the same names and shapes."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith(".lora_B"):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _close(actual, expected, what, rtol=1e-5):
    """Equal within rtol of expected's largest magnitude (fp32 sums in another order)."""
    atol = rtol * max(expected.abs().max().item(), 1e-6)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


# ---- config ---------------------------------------------------------------------------------


def test_config_defaults_scale_and_json():
    config = LoRAConfig(8)
    assert config.targets == ("qkv", "attn_out", "mlp_in", "mlp_out") and config.scale == 1.0
    assert LoRAConfig(4, alpha=16).scale == 4.0
    config = LoRAConfig(4, alpha=2.0, dropout=0.1, targets=["mlp_in", "qkv"])
    assert config.targets == ("mlp_in", "qkv")  # lists become tuples: hashable, frozen
    assert LoRAConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "rank must be a positive integer, got 0"),
        (dict(rank=2.0), "rank must be a positive integer, got 2.0"),
        (dict(rank=True), "rank must be a positive integer, got True"),
        (dict(rank=4, alpha=0), "alpha must be a positive number or None"),
        (dict(rank=4, alpha="8"), "alpha must be a positive number or None"),
        (dict(rank=4, dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(rank=4, dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(rank=4, targets="qkv"), "the string 'qkv'; choose from qkv, attn_out, mlp_in, mlp_out"),
        (dict(rank=4, targets=("qkv", "c_fc")), r"unknown \['c_fc'\]; choose from qkv, attn_out, mlp_in, mlp_out"),
        (dict(rank=4, targets=()), "at most once"),
        (dict(rank=4, targets=("qkv", "qkv")), "at most once"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**kwargs)


# ---- single process -------------------------------------------------------------------------


@pytest.mark.parametrize("use_gptcore_ops", [True, False])
def test_fresh_adapters_leave_the_model_unchanged(use_gptcore_ops):
    idx, _ = _ids()
    model = _base(use_gptcore_ops=use_gptcore_ops)
    with torch.no_grad():
        expected = model(idx)[0]
    no_gelu = copy.deepcopy(model)
    apply_lora(model, LoRAConfig(4, alpha=8))
    apply_lora(no_gelu, LoRAConfig(4, targets=("qkv", "attn_out", "mlp_out")))
    with torch.no_grad():
        # B = 0: the term is exactly zero; it rides the GEMM's residual epilogue.
        assert torch.equal(no_gelu(idx)[0], expected)
        if use_gptcore_ops:  # mlp_in leaves the fused GELU for F.gelu: the same up to an ulp
            _close(model(idx)[0], expected, "fresh adapters on mlp_in", rtol=1e-6)
        else:
            assert torch.equal(model(idx)[0], expected)


def test_adapter_names_shapes_and_init():
    model = _base()
    lora = LoRAConfig(4)
    params = apply_lora(model, lora, seed=3)
    C, L = 64, model.config.n_layer
    state = lora_state_dict(model)
    assert len(params) == len(state) == 2 * len(TARGETS) * L
    shapes = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    for layer in range(L):
        for path, (out, inp) in shapes.items():
            A, B = state[f"transformer.h.{layer}.{path}.lora_A"], state[f"transformer.h.{layer}.{path}.lora_B"]
            assert A.shape == (4, inp) and B.shape == (out, 4)
            assert not B.any()
            bound = inp**-0.5  # peft: kaiming_uniform_(a=sqrt(5)) on [r, in] is U(-1/sqrt(in), 1/sqrt(in))
            assert A.abs().max() <= bound and A.abs().max() > 0.9 * bound
    again = _base(seed=7)  # other base weights, same adapter seed: the same A
    apply_lora(again, lora, seed=3)
    assert all(torch.equal(v, lora_state_dict(again)[k]) for k, v in state.items())
    other = _base()
    apply_lora(other, lora, seed=4)
    assert not torch.equal(lora_state_dict(other)[next(iter(state))], next(iter(state.values())))
    a_names = [k for k in state if k.endswith("lora_A")]
    assert not torch.equal(state[a_names[0]][:, :C], state[a_names[1]][:, :C])  # each A its own draw


@pytest.mark.parametrize("target", list(TARGETS))
def test_each_target_alone(target):
    idx, _ = _ids()
    model = _base(use_gptcore_ops=False)
    with torch.no_grad():
        base = model(idx)[0]
    apply_lora(model, LoRAConfig(2, targets=(target,)))
    names = {k.rsplit(".", 1)[0].split(".", 3)[3] for k in lora_state_dict(model)}
    assert names == {TARGETS[target]}
    _randomize_B(model)
    with torch.no_grad():
        adapted = model(idx)[0]
        assert (adapted - base).abs().max() > 1e-3  # the term is on
        merge_lora(model)
        _close(model(idx)[0], adapted, f"{target}: merged")


@pytest.mark.parametrize("use_gptcore_ops", [True, False])
def test_merge_equals_unmerged_and_unmerge_restores(use_gptcore_ops):
    idx, _ = _ids()
    model = _base(use_gptcore_ops=use_gptcore_ops)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(4, alpha=8, targets=("qkv", "mlp_in", "mlp_out")))
    _randomize_B(model)
    with torch.no_grad():
        unmerged = model(idx)[0]
        merge_lora(model)
        merge_lora(model)  # merged adapters stay merged: no second B A
        assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, weights["transformer.h.0.attn.c_attn.weight"])
        assert model.transformer.h[0].attn.c_proj.weight.equal(weights["transformer.h.0.attn.c_proj.weight"])
        _close(model(idx)[0], unmerged, "merged logits")
        unmerge_lora(model)
        for name, expected in weights.items():
            _close(model.state_dict()[name], expected, f"unmerged {name}", rtol=1e-6)
        _close(model(idx)[0], unmerged, "unmerged logits")


def test_merge_in_bf16():
    idx, _ = _ids()
    model = _base(use_gptcore_ops=False)
    apply_lora(model, LoRAConfig(4))
    _randomize_B(model)
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        unmerged = model(idx)[0].float()
        merge_lora(model)
        assert model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16
        _close(model(idx)[0].float(), unmerged, "bf16 merged logits", rtol=3e-2)


def test_only_adapters_train():
    idx, targets = _ids()
    model = _base().train()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    params = apply_lora(model, LoRAConfig(4))
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(idx, targets)[1].backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == name.endswith((".lora_A", ".lora_B")), name
        optimizer.step()
    assert all(p.grad.any() for p in params)  # A's too: B moved off zero in the first step
    for name, value in model.state_dict().items():
        if name in base_state:
            assert torch.equal(value, base_state[name]), name
    assert set(lora_state_dict(model)) == set(model.state_dict()) - set(base_state)


def test_recompute_and_kv_cache_see_the_adapters():
    from gptcore.generate import KVCache

    idx, targets = _ids()
    model = _base()
    params = apply_lora(model, LoRAConfig(4))
    _randomize_B(model)
    model.train()
    model(idx, targets)[1].backward()
    expected = [p.grad.clone() for p in params]
    for recompute in ("full", "selective"):
        model.recompute = recompute
        for p in params:
            p.grad = None
        model(idx, targets)[1].backward()
        for p, g in zip(params, expected):
            _close(p.grad, g, f"recompute={recompute}")
    model.eval()
    with torch.no_grad():
        full = model(idx[:1])[0][0]
        cache = KVCache(model, slots=1, max_len=16, device="cpu", dtype=torch.float32)
        logits = model.forward_cached(idx[:1], torch.arange(idx.shape[1]), cache.prefill_attend([0]))
        _close(logits[0], full[-1], "KV-cache prefill with adapters")


def test_dropout_only_in_training():
    idx, _ = _ids()
    model = _base(use_gptcore_ops=False)
    apply_lora(model, LoRAConfig(4, dropout=0.5))
    _randomize_B(model, std=0.5)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, LoRALinear):
            m.dropout = 0.0
    with torch.no_grad():
        assert torch.equal(model.eval()(idx)[0], plain.eval()(idx)[0])
        first, second = model.train()(idx)[0], model(idx)[0]
        assert not torch.equal(first, second)
        assert not torch.equal(first, plain.train()(idx)[0])  # the base model has no dropout of its own


def test_save_and_load_adapters(tmp_path):
    idx, _ = _ids()
    lora = LoRAConfig(4, alpha=8, dropout=0.05, targets=("qkv", "mlp_out"))
    model = _base()
    apply_lora(model, lora)
    _randomize_B(model)
    with torch.no_grad():
        expected = model(idx)[0]
    path = save_adapters(model, tmp_path / "adapter.safetensors", lora, base=tmp_path / "base.safetensors")
    assert set(load_file(path)) == set(lora_state_dict(model))  # adapters only
    state, config, metadata = load_adapters(path)
    assert config == lora and metadata["gptcore_lora_base"] == str(tmp_path / "base.safetensors")
    assert all(torch.equal(state[k], v) for k, v in lora_state_dict(model).items())
    assert "gptcore_lora_base" not in load_adapters(save_adapters(model, tmp_path / "b.safetensors", lora))[2]

    fresh = _base()
    assert apply_adapters(fresh, path) == lora
    assert not fresh.transformer.h[0].attn.c_attn.merged
    merged = _base()
    apply_adapters(merged, path, merge=True)
    assert merged.transformer.h[0].attn.c_attn.merged
    with torch.no_grad():
        assert torch.equal(fresh(idx)[0], expected)
        _close(merged(idx)[0], expected, "merged after loading")

    stages = [pipeline_stage(_base(), s, 2).eval() for s in range(2)]  # each takes its layers' adapters
    for stage in stages:
        apply_adapters(stage, path)
    with torch.no_grad():
        assert torch.equal(stages[1](stages[0](idx))[0], expected)


def test_pipeline_stages_draw_the_same_adapters():
    model = _base()
    stages = [pipeline_stage(_base(), s, 2) for s in range(2)]
    apply_lora(model, LoRAConfig(4), seed=9)
    state = lora_state_dict(model)
    for stage in stages:
        apply_lora(stage, LoRAConfig(4), seed=9)
        stage_state = lora_state_dict(stage)
        assert len(stage_state) == len(state) // 2
        assert all(torch.equal(v, state[k]) for k, v in stage_state.items())


def test_errors(tmp_path):
    model = _base()
    with pytest.raises(ValueError, match="GPT has no LoRA adapters"):
        merge_lora(model)
    with pytest.raises(TypeError, match="config must be a LoRAConfig"):
        apply_lora(model, 4)
    with pytest.raises(ValueError, match="Linear has none of the target linears"):
        apply_lora(torch.nn.Linear(4, 4), LoRAConfig(2))
    apply_lora(model, LoRAConfig(4, targets=("qkv",)))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig(4))

    state = {k: v.clone() for k, v in lora_state_dict(model).items()}
    with pytest.raises(ValueError, match=r"missing \['transformer.h.0.attn.c_attn.lora_A'\]"):
        load_lora_state_dict(model, {k: v for k, v in state.items() if k != "transformer.h.0.attn.c_attn.lora_A"})
    with pytest.raises(ValueError, match=r"unexpected \['transformer.h.0.mlp.c_fc.lora_A'\]"):
        load_lora_state_dict(model, state | {"transformer.h.0.mlp.c_fc.lora_A": torch.zeros(4, 64)})
    with pytest.raises(ValueError, match=r"transformer.h.1.attn.c_attn.lora_B has shape \[192, 2\]; the model's is"):
        load_lora_state_dict(model, state | {"transformer.h.1.attn.c_attn.lora_B": torch.zeros(192, 2)})
    merge_lora(model)
    with pytest.raises(ValueError, match="merged into the weights; unmerge_lora first"):
        load_lora_state_dict(model, state)

    with pytest.raises(ValueError, match="the adapters have rank \\[4\\]; the config says 8"):
        save_adapters(model, tmp_path / "a.safetensors", LoRAConfig(8))
    with pytest.raises(ValueError, match="are not adapter tensors"):
        save_adapter_state({"transformer.wpe.weight": torch.zeros(2)}, tmp_path / "a.safetensors", LoRAConfig(4))
    save_model(_base(), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not a gptcore LoRA adapter file"):
        load_adapters(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not a LoRA adapter file"):
        load_adapters(tmp_path / "missing.safetensors")
    save_adapters(model, tmp_path / "qkv.safetensors", LoRAConfig(4, targets=("qkv",)))
    wrong_size = GPT(_config(n_embd=128))
    with pytest.raises(ValueError, match="has shape"):
        apply_adapters(wrong_size, tmp_path / "qkv.safetensors")


# ---- tensor parallel: tp2 against the single-process LoRA model -------------------------------

TP = 2


def _tp_config(**overrides) -> GPTConfig:
    # vocab 200 pads to 256 (128 rows a rank); 4 heads of 32.
    return GPTConfig(**(dict(vocab_size=200, n_positions=32, n_layer=2, n_head=4, n_embd=128) | overrides))


def _compare_tp(group, sequence_parallel, use_gptcore_ops, adapter_path):
    rank = dist.get_rank(group)
    what = f"sequence_parallel={sequence_parallel} gptcore_ops={use_gptcore_ops}"
    torch.manual_seed(0)
    base = GPT(_tp_config(use_gptcore_ops=use_gptcore_ops)).train()
    model = copy.deepcopy(base)
    tp_model = parallelize(copy.deepcopy(base), group, sequence_parallel=sequence_parallel)
    lora = LoRAConfig(4, alpha=8, targets=("qkv", "attn_out", "mlp_in", "mlp_out"))
    apply_lora(model, lora, seed=5)
    tp_params = apply_lora(tp_model, lora, seed=5)
    shards = [shard_state_dict(lora_state_dict(model), r, TP) for r in range(TP)]
    local = lora_state_dict(tp_model)
    assert all(torch.equal(local[k], v) for k, v in shards[rank].items()), f"{what}: init is not the shard"
    assert all(torch.equal(merge_state_dicts(shards)[k], v) for k, v in lora_state_dict(model).items())
    for name, p in tp_model.named_parameters():
        assert p.requires_grad == name.endswith(("lora_A", "lora_B")), name
        if "lora" in name:
            row = ".c_proj." in name
            assert p.tensor_parallel == (name.endswith("lora_A") == row), name
            assert p.sequence_parallel == (sequence_parallel and name.endswith("lora_B") == row), name

    _randomize_B(model)
    load_lora_state_dict(tp_model, shard_state_dict(lora_state_dict(model), rank, TP))
    idx, targets = _ids(seq_len=16, seed=3)
    logits, loss = model(idx, targets)
    tp_logits, tp_loss = tp_model(idx, targets)
    _close(tp_model.lm_head.gather(tp_logits).detach(), logits.detach(), f"{what}: logits")
    _close(tp_loss.detach(), loss.detach(), f"{what}: loss")
    loss.backward()
    tp_loss.backward()
    reduce_sequence_parallel_grads(tp_model, group)
    grads = gather_full_state_dict({n: p.grad for n, p in tp_model.named_parameters() if p.requires_grad}, group)
    for name, p in model.named_parameters():
        if p.requires_grad:
            _close(grads[name], p.grad, f"{what}: grad of {name}")
    trained = {id(p) for p in tp_params}
    assert all(p.grad is None for p in tp_model.parameters() if id(p) not in trained)

    model.eval()
    tp_model.eval()
    with torch.no_grad():
        merge_lora(tp_model)
        _close(tp_model(idx)[0], model(idx)[0], f"{what}: merged logits")

    # An adapter file (whole tensors) into a tensor-parallel pipeline stage: each rank takes its shards.
    stage = parallelize(pipeline_stage(copy.deepcopy(base), 0, 1), group, sequence_parallel).eval()
    apply_adapters(stage, adapter_path)
    with torch.no_grad():
        _close(stage(idx)[0], model(idx)[0], f"{what}: tp pipeline stage from the adapter file")
    # A checkpoint's adapter shards, one file a rank, merge into the whole adapters.
    save_adapters(stage, f"{adapter_path}.{sequence_parallel}.{rank}", lora)
    dist.barrier(group)
    merged = merge_state_dicts([load_adapters(f"{adapter_path}.{sequence_parallel}.{r}")[0] for r in range(TP)])
    whole = load_adapters(adapter_path)[0]
    assert merged.keys() == whole.keys() and all(torch.equal(merged[k], v) for k, v in whole.items())
    with pytest.raises(ValueError, match="a tensor-parallel shard"):
        apply_adapters(copy.deepcopy(base), f"{adapter_path}.{sequence_parallel}.{rank}")


def _tp_worker(rank, world_size, adapter_path):
    group = dist.group.WORLD
    _compare_tp(group, sequence_parallel=False, use_gptcore_ops=True, adapter_path=adapter_path)
    _compare_tp(group, sequence_parallel=True, use_gptcore_ops=True, adapter_path=adapter_path)
    _compare_tp(group, sequence_parallel=True, use_gptcore_ops=False, adapter_path=adapter_path)


def test_tensor_parallel_equals_single_process(tmp_path):
    """tp2 and tp2 with sequence parallelism: the same adapter init, logits, loss, adapter grads
    and merged logits as the single-process LoRA model."""
    torch.manual_seed(0)
    model = GPT(_tp_config())
    lora = LoRAConfig(4, alpha=8)
    apply_lora(model, lora, seed=5)
    _randomize_B(model)
    path = save_adapters(model, tmp_path / "adapter.safetensors", lora)
    run_distributed(_tp_worker, TP, str(path))


# ---- generate --lora ------------------------------------------------------------------------

TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "To be or not to be, that is the question. All that glitters is not gold.\n"
) * 40


def test_generate_cli_with_lora_equals_the_merged_model(tmp_path, capsys):
    (tmp_path / "text.txt").write_text(TEXT)
    spm = train_sentencepiece([tmp_path / "text.txt"], tmp_path / "spm", vocab_size=512)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "spm.model").write_bytes(spm.read_bytes())
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_positions=64, n_layer=2, n_head=2, n_embd=64))
    save_model(model, tmp_path / "model.safetensors")
    lora = LoRAConfig(4, alpha=8)
    apply_lora(model, lora)
    _randomize_B(model, std=0.5)
    save_adapters(model, tmp_path / "adapter.safetensors", lora, base=tmp_path / "model.safetensors")

    argv = ["generate", "--checkpoint", str(tmp_path / "model.safetensors"), "--prompt", "To be or"]
    argv += ["--max-new-tokens", "12", "--temperature", "0", "--ignore-eos"]
    assert cli.main([*argv, "--lora", str(tmp_path / "adapter.safetensors")]) == 0
    out = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out != out  # the adapters change the text

    merged = load_model(tmp_path / "model.safetensors")
    apply_adapters(merged, tmp_path / "adapter.safetensors", merge=True)
    tokenizer = load_for_inference(tmp_path / "model.safetensors")[1]
    expected = Generator(merged.eval(), tokenizer).generate("To be or", max_new_tokens=12, temperature=0, stop_ids=())
    assert out.rstrip("\n") == "To be or" + expected[0].text

    assert cli.main([*argv, "--lora", str(tmp_path / "model.safetensors")]) == 2
    assert "not a gptcore LoRA adapter file" in capsys.readouterr().err
