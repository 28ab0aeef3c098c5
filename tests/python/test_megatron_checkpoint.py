"""Megatron-LM GPT checkpoints in and out, against megatron-core itself: its GPTModel (local layer spec,
GPT-2 settings) built on the CPU in a gloo world of one; its state dict written as Megatron's torch
layout (iter_NNNNNNN/mp_rank_TT[_PPP]/model_optim_rng.pt) split over tensor x pipeline ranks, under
megatron-core's names, its Transformer Engine spec's and the legacy ones; gptcore's logits on it
against megatron-core's; gptcore's export loaded back into megatron-core's GPTModel. megatron-core's
CPU forward needs three changes: its attention takes a scratch buffer from a global pool that allocates
on torch.cuda.current_device() (the test hands it CPU memory), its default causal mask is made on
"cuda" (the test passes the same mask as attention_mask), and its attention dropout forks the CUDA
generator (p = 0: the test makes the fork a no-op); the computation is megatron-core's own."""

import argparse
import contextlib
import functools
import io
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptcore import cli, convert
from gptcore.checkpoint import load_any, load_for_inference, resolve, save_model
from gptcore.convert.megatron import ITERATION_FILE, RANK_FILE
from gptcore.data import IndexedDatasetBuilder
from gptcore.model import GPT, GPTConfig

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # megatron-core warns that Transformer Engine / Apex are absent
    pytest.importorskip("megatron.core")
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core import utils as megatron_utils
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

LAYERS, HIDDEN, HEADS, VOCAB, POSITIONS = 4, 128, 4, 512, 32  # head dim 32: gptcore's attention kernels


def _cpu_buffer(self, tensor_shape, dtype, name, mem_alloc_context=None):
    return torch.empty(tensor_shape, dtype=dtype)


@pytest.fixture(scope="module")
def megatron(tmp_path_factory):
    """(megatron-core's GPTModel with random weights, its state dict, a forward on token ids)."""
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    patch = pytest.MonkeyPatch()
    patch.setattr(megatron_utils.GlobalMemoryBuffer, "get_tensor", _cpu_buffer)
    # Its attention dropout (p = 0 here) forks the CUDA generator's state: nothing to fork on the CPU.
    patch.setattr(tensor_parallel.get_cuda_rng_tracker(), "fork", lambda *_: contextlib.nullcontext())
    try:
        config = TransformerConfig(
            num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, ffn_hidden_size=4 * HIDDEN,
            normalization="LayerNorm", layernorm_epsilon=1e-5, add_bias_linear=True, add_qkv_bias=True,
            activation_func=functools.partial(F.gelu, approximate="tanh"),  # Megatron's --openai-gelu
            gated_linear_unit=False, bias_activation_fusion=False, bias_dropout_fusion=False,
            masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
            hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True, params_dtype=torch.float32,
        )  # fmt: skip
        torch.manual_seed(0)
        model = GPTModel(
            config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=VOCAB,
            max_sequence_length=POSITIONS, position_embedding_type="learned_absolute",
            share_embeddings_and_output_weights=True, parallel_output=False,
        ).eval()  # fmt: skip
        with torch.no_grad():  # random biases and LN weights too, so a wrong mapping shows
            for p in model.parameters():
                p.normal_(0.0, 0.05)

        def forward(ids, weights=None):
            if weights is not None:
                model.load_state_dict(weights, strict=True)
            positions = torch.arange(ids.shape[1]).expand_as(ids)
            T = ids.shape[1]
            mask = torch.ones(T, T, dtype=torch.bool).triu(1)[None, None]  # True: masked (its default is on CUDA)
            with torch.no_grad():
                return model(ids, positions, attention_mask=mask)

        state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        yield model, state, forward
    finally:
        patch.undo()
        parallel_state.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_training_starts_from_a_megatron_checkpoint(tmp_path, capsys):
    """init_from= a Megatron folder (here gptcore's own export, tp 2 x pp 2): the trainer starts from it.
    First in the file: it runs before the megatron fixture holds a process group (the trainer makes its own)."""
    tokenizers = pytest.importorskip("tokenizers")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_positions=32, n_layer=2, n_head=4, n_embd=128, use_gptcore_ops=False))
    convert.to_megatron(model, tmp_path / "megatron", 2, 2)
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(["hello world " * 50], vocab_size=300, special_tokens=["<|endoftext|>"])
    bpe.save(str(tmp_path / "tokenizer.json"))
    tokens = np.random.default_rng(0)
    with IndexedDatasetBuilder(str(tmp_path / "data"), dtype=np.uint16) as builder:
        for _ in range(40):
            builder.add_document([tokens.integers(0, 300, 50)])
    overrides = dict(
        init_from=tmp_path / "megatron", data_path=tmp_path / "data", tokenizer=tmp_path / "tokenizer.json",
        seq_len=16, micro_batch_size=2, global_batch_size=2, train_steps=2, warmup_steps=0, split="100,0,0",
        eval_interval=0, log_interval=1, progress=False, device="cpu", save=tmp_path / "run",
    )  # fmt: skip
    assert cli.main(["train", *(f"{k}={v}" for k, v in overrides.items())]) == 0
    out = capsys.readouterr().out
    assert "training 0.47M params" in out and "saved" in out
    start = load_any(tmp_path / "megatron", use_gptcore_ops=False)
    torch.testing.assert_close(start.state_dict(), model.state_dict(), atol=0, rtol=0)

    # The trained model back to Megatron, its tokenizer in OUT/tokenizer/, where generate finds it.
    out = tmp_path / "trained"
    assert cli.main(["convert", "megatron-export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert f"tokenizer from {tmp_path / 'run'}" in capsys.readouterr().out
    argv = ["--checkpoint", str(out), "--prompt", "hello", "--max-new-tokens", "3", "--temperature", "0"]
    assert cli.main(["generate", *argv]) == 0
    assert capsys.readouterr().out.startswith("hello")


IDS = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
COLUMN = ("linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight", "linear_fc1.bias", "word_embeddings.weight")
ROW = ("linear_proj.weight", "linear_fc2.weight")


def _legacy(name: str) -> str:
    """megatron-core's name -> legacy Megatron-LM's (flattened; the file nests it by its dots' first parts)."""
    for core, legacy in [
        ("self_attention.linear_qkv.", "self_attention.query_key_value."),
        ("self_attention.linear_proj.", "self_attention.dense."),
        ("pre_mlp_layernorm.", "post_attention_layernorm."),
        ("mlp.linear_fc1.", "mlp.dense_h_to_4h."),
        ("mlp.linear_fc2.", "mlp.dense_4h_to_h."),
        ("decoder.", "language_model.encoder."),
        ("embedding.", "language_model.embedding."),
        ("output_layer.", "word_embeddings_for_head."),
    ]:
        name = name.replace(core, legacy)
    return name


def _nest(flat: dict) -> dict:
    """Legacy Megatron's nesting: language_model -> embedding -> word_embeddings -> weight; encoder flat."""
    tree = {}
    for name, value in flat.items():
        if name.startswith("language_model.encoder."):
            tree.setdefault("language_model", {}).setdefault("encoder", {})[name.split(".", 2)[2]] = value
            continue
        node, parts = tree, name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _transformer_engine(shard: dict) -> dict:
    """megatron-core's names -> its Transformer Engine layer spec's: layer norms fused into the next
    linear, and each linear's _extra_state (a BytesIO)."""
    out = {}
    for name, value in shard.items():
        name = name.replace("input_layernorm.", "self_attention.linear_qkv.layer_norm_")
        out[name.replace("pre_mlp_layernorm.", "mlp.linear_fc1.layer_norm_")] = value
        if name.endswith(("linear_qkv.weight", "linear_fc1.weight")):
            out[name.replace(".weight", "._extra_state")] = io.BytesIO(b"fp8 metadata")
    return out


def write_megatron(state, root, T=1, P=1, naming="core", iteration=100, args=True, version=3.0):
    """megatron-core's state dict as Megatron saves it over T x P ranks: column-parallel weights by row
    blocks (QKV rows are [heads, 3, head_dim], so by head), row-parallel by column blocks, layers
    numbered from 0 in each stage, the tied embedding's copy on the last stage."""
    per_stage = LAYERS // P
    namespace = argparse.Namespace(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, max_position_embeddings=POSITIONS,
        padded_vocab_size=VOCAB, tensor_model_parallel_size=T, pipeline_model_parallel_size=P,
        openai_gelu=True, swiglu=False, normalization="LayerNorm", position_embedding_type="learned_absolute",
        layernorm_epsilon=1e-5, params_dtype=torch.float32,
        attention_backend=AttnBackend.auto,  # an enum of megatron-core's, as Megatron-LM's args hold
    )  # fmt: skip
    folder = root / f"iter_{iteration:07d}"
    for p in range(P):
        for t in range(T):
            shard = {}
            for name, value in state.items():
                if name.startswith("decoder.layers."):
                    layer = int(name.split(".")[2])
                    if not p * per_stage <= layer < (p + 1) * per_stage:
                        continue
                    name = name.replace(f"layers.{layer}.", f"layers.{layer - p * per_stage}.", 1)
                elif name.startswith("embedding.") and p != 0 or name.startswith("decoder.final") and p != P - 1:
                    continue
                if name.endswith(COLUMN):
                    value = value.chunk(T, dim=0)[t]
                elif name.endswith(ROW):
                    value = value.chunk(T, dim=1)[t]
                shard[name] = value.clone()
            if P > 1 and p == P - 1:
                shard["output_layer.weight"] = state["embedding.word_embeddings.weight"].chunk(T)[t].clone()
            if naming == "legacy":
                shard = _nest({_legacy(k): v for k, v in shard.items()})
            elif naming == "te":
                shard = _transformer_engine(shard)
            rank = folder / (f"mp_rank_{t:02d}" + (f"_{p:03d}" if P > 1 else ""))
            rank.mkdir(parents=True)
            checkpoint = dict(model=shard, checkpoint_version=version, iteration=iteration)
            if args:
                checkpoint["args"] = namespace
            torch.save(checkpoint, rank / RANK_FILE)
    (root / ITERATION_FILE).write_text(f"{iteration}\n")
    return root


def write_modelscope(state, root, T=1):
    """megatron-core's state dict as ModelScope ships its GPT-3 (DistributedGPT3): config.json (its
    GPT3Config) and configuration.json beside model/mp_rank_TT_model_states.pt, DeepSpeed's file per
    tensor rank, the legacy names flat under "module"."""
    (root / "model").mkdir(parents=True)
    config = dict(
        model_type="gpt3", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        max_position_embeddings=POSITIONS, layernorm_epsilon=1e-5, hidden_act="gelu", eod_id=7,
    )  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))
    (root / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "text-generation"}))
    for t in range(T):
        shard = {}
        for name, value in state.items():
            if name.endswith(COLUMN):
                value = value.chunk(T, dim=0)[t]
            elif name.endswith(ROW):
                value = value.chunk(T, dim=1)[t]
            shard[_legacy(name)] = value.clone()
        checkpoint = dict(module=shard, global_steps=1000, dp_world_size=8, mp_world_size=T, optimizer=None)
        torch.save(checkpoint, root / "model" / f"mp_rank_{t:02d}_model_states.pt")
    return root


@pytest.mark.parametrize("T", [1, 2])
def test_modelscope_gpt3_folder_logits_equal_megatron_core(megatron, tmp_path, T):
    """ModelScope's GPT-3 (nlp_gpt3_text-generation_*: Megatron's legacy names in DeepSpeed's files)
    is a model source as it is; its config.json is its config (not taken for an HF folder), and its
    erf GELU is said once."""
    _, state, forward = megatron
    root = write_modelscope(state, tmp_path / "nlp_gpt3_text-generation", T)
    assert resolve(root) == ("megatron", root)
    with pytest.warns(UserWarning, match="erf GELU"):
        model = load_any(root).eval()
    assert (model.config.n_layer, model.config.n_head, model.config.layer_norm_eps) == (LAYERS, HEADS, 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS)[0], forward(IDS), atol=1e-5, rtol=1e-5)
    if T == 2:  # a rank's file lost: named
        (root / "model" / "mp_rank_00_model_states.pt").unlink()
        with pytest.raises(FileNotFoundError, match="mp_rank_00 missing"):
            load_any(root)


@pytest.mark.parametrize("naming", ["core", "legacy", "te"])
@pytest.mark.parametrize(("T", "P"), [(1, 1), (2, 1), (1, 2), (2, 2), (4, 4)])
def test_megatron_checkpoint_logits_equal_megatron_core(megatron, tmp_path, T, P, naming):
    _, state, forward = megatron
    root = write_megatron(state, tmp_path / "megatron", T, P, naming)
    assert resolve(root)[0] == "megatron"
    model = convert.from_megatron(root).eval()
    assert (model.config.n_layer, model.config.n_head, model.config.vocab_size) == (LAYERS, HEADS, VOCAB)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS)[0], forward(IDS), atol=1e-5, rtol=1e-5)


def test_export_loads_into_megatron_core_and_splits_as_megatron_does(megatron, tmp_path, capsys):
    _, state, forward = megatron
    model = convert.from_megatron(write_megatron(state, tmp_path / "src")).eval()
    with torch.no_grad():
        ours = model(IDS)[0]
    save_model(model, tmp_path / "model.safetensors")
    out = tmp_path / "out11"
    assert cli.main(["convert", "megatron-export", "--checkpoint", str(tmp_path / "model.safetensors"),
                     "--out", str(out)]) == 0  # fmt: skip
    exported = torch.load(out / "release" / "mp_rank_00" / RANK_FILE, weights_only=False)
    assert exported["checkpoint_version"] == 3.0 and (out / ITERATION_FILE).read_text() == "release\n"
    torch.testing.assert_close(forward(IDS, exported["model"] | _extra_states(megatron[0])), ours, atol=1e-5, rtol=1e-5)
    forward(IDS, state | _extra_states(megatron[0]))  # megatron's own weights back in place

    out = tmp_path / "out22"
    assert cli.main(["convert", "megatron-export", "--checkpoint", str(tmp_path / "model.safetensors"),
                     "--tensor-parallel", "2", "--pipeline-parallel", "2", "--out", str(out)]) == 0  # fmt: skip
    reference = write_megatron(state, tmp_path / "reference", 2, 2)
    for rank in ("mp_rank_00_000", "mp_rank_01_000", "mp_rank_00_001", "mp_rank_01_001"):
        theirs = torch.load(reference / "iter_0000100" / rank / RANK_FILE, weights_only=False)["model"]
        mine = torch.load(out / "release" / rank / RANK_FILE, weights_only=False)["model"]
        assert mine.keys() == theirs.keys(), rank
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], atol=0, rtol=0, msg=f"{rank} {name}")
    with torch.no_grad():
        torch.testing.assert_close(load_any(out)(IDS)[0], ours, atol=1e-5, rtol=1e-5)


def _extra_states(model):
    return {k: v for k, v in model.state_dict().items() if k.endswith("_extra_state")}


def test_megatron_folder_as_a_model_source(megatron, tmp_path, capsys):
    """`convert megatron-import`, and a Megatron folder as --checkpoint (generate/eval/serve) and
    init_from (load_any): an iteration folder too; vocab_size drops Megatron's padding rows."""
    _, state, forward = megatron
    root = write_megatron(state, tmp_path / "megatron", 2, 2)
    (root / "tokenizer").mkdir()
    out = tmp_path / "model.safetensors"
    assert cli.main(["convert", "megatron-import", "--checkpoint", str(root), "--vocab-size", "500",
                     "--out", str(out)]) == 0  # fmt: skip
    assert "4 layers, 4 heads, 128 wide, vocab 500" in capsys.readouterr().out
    # A fresh process, where megatron-core is not imported (it allowlists its own enums when it is):
    # the args' AttnBackend is read as an inert stand-in.
    again = tmp_path / "again.safetensors"
    argv = ["convert", "megatron-import", "--checkpoint", str(root), "--vocab-size", "500", "--out", str(again)]
    run = subprocess.run([sys.executable, "-m", "gptcore", *argv], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    model, _ = load_for_inference(out)
    torch.testing.assert_close(load_for_inference(again)[0](IDS % 500)[0], model(IDS % 500)[0], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS % 500)[0], forward(IDS % 500)[..., :500], atol=1e-5, rtol=1e-5)
        model, tokenizer = load_for_inference(root / "iter_0000100")
        assert tokenizer is None and model.config.vocab_size == VOCAB
        torch.testing.assert_close(model(IDS)[0], forward(IDS), atol=1e-5, rtol=1e-5)
    code = cli.main(["generate", "--checkpoint", str(root), "--prompt", "x"])
    err = capsys.readouterr().err
    assert (
        code == 2 and err == f"gptcore generate: error: {root}: no tokenizer found beside the model; give --tokenizer\n"
    )


class NotTensors:  # stands for what a checkpoint could carry beyond tensors
    pass


def test_bad_megatron_checkpoints_get_one_line(megatron, tmp_path, capsys):
    _, state, _ = megatron

    def error(root):
        code = cli.main(["convert", "megatron-import", "--checkpoint", str(root), "--out", str(tmp_path / "m.st")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("gptcore convert: error: ") and err.count("\n") == 1, err
        return err

    root = write_megatron(state, tmp_path / "missing", 2, 1)
    (root / "iter_0000100" / "mp_rank_01" / RANK_FILE).unlink()
    assert f"{RANK_FILE} of rank folder(s) mp_rank_01 missing (tp=2 x pp=1)" in error(root)

    root = write_megatron(state, tmp_path / "code", 1, 1)
    checkpoint = torch.load(root / "iter_0000100" / "mp_rank_00" / RANK_FILE, weights_only=False)
    torch.save(checkpoint | {"extra": NotTensors()}, root / "iter_0000100" / "mp_rank_00" / RANK_FILE)
    err = error(root)
    assert "NotTensors beyond tensors and args" in err and "does not run code from a checkpoint" in err

    root = write_megatron(state, tmp_path / "noargs", 1, 1, args=False)
    assert "--num-attention-heads" in error(root)
    assert cli.main(["convert", "megatron-import", "--checkpoint", str(root), "--num-attention-heads", "4",
                     "--out", str(tmp_path / "m.safetensors")]) == 0  # fmt: skip

    root = write_megatron(state, tmp_path / "old", 1, 1, version=1.0)
    assert "checkpoint_version 1.0" in error(root)

    root = write_megatron(state, tmp_path / "swiglu", 1, 1)
    checkpoint = torch.load(root / "iter_0000100" / "mp_rank_00" / RANK_FILE, weights_only=False)
    checkpoint["args"].swiglu = True
    torch.save(checkpoint, root / "iter_0000100" / "mp_rank_00" / RANK_FILE)
    assert "SwiGLU" in error(root)

    (tmp_path / "dist" / "iter_0000100").mkdir(parents=True)
    (tmp_path / "dist" / ITERATION_FILE).write_text("100\n")
    (tmp_path / "dist" / "iter_0000100" / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    assert "a megatron-core distributed checkpoint (torch_dist)" in error(tmp_path / "dist")

    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / ITERATION_FILE).write_text("200\n")
    assert "says '200' but iter_0000200/ is missing" in error(tmp_path / "latest")
