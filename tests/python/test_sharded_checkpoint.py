"""Sharded training checkpoints (gptcore.checkpoint.sharded): writing and reading the per-rank model
files, loading under another layout, `gptcore convert reshard`, and every model loader (load_any,
load_for_inference, hf-export) reading a sharded checkpoint as the full model. Single process."""

import json

import pytest
import torch

from gptcore import cli
from gptcore.checkpoint import (
    COMPLETE,
    LATEST,
    LAYOUT_FILE,
    has_trainer_state,
    load_any,
    load_for_inference,
    load_full_state,
    load_model_shards,
    load_shard_for,
    load_trainer_state,
    model_file_name,
    read_layout,
    read_model_metadata,
    reshard_checkpoint,
    resolve,
    save_model_shard,
    save_model_state,
    save_trainer_state,
    write_layout,
)
from gptcore.model import GPT, GPTConfig
from gptcore.parallel.reshard import split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = GPTConfig(vocab_size=256, n_positions=32, n_layer=4, n_head=4, n_embd=64, use_gptcore_ops=False)
TORCH_OPS = dict(use_gptcore_ops=False)  # head dim 16: gptcore's attention takes 32..128
STEP = "step_00000007"


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    with torch.no_grad():  # random biases and LN weights too, so a misplaced tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def full(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _write_sharded(folder, full, tp, pp, trainer_state=None):
    """A fake training checkpoint folder with the model in a tp x pp layout."""
    folder.mkdir(parents=True)
    for (t, p), state in split(full, CONFIG, tp, pp).items():
        save_model_shard(state, CONFIG, folder, t, p, tp, pp)
    write_layout(folder, tp, pp, dp=2, zero_stage=1)
    if trainer_state is not None:
        save_trainer_state(trainer_state, folder)
    (folder / "config.yaml").write_text("lr: 0.001\n")
    (folder / COMPLETE).write_text("7\n")
    return folder


def _write_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "</s>", "hello", "world", "the", "fox"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["</s>"])
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, full):
    """save/step_00000007 in tp=2 x pp=2, with the trainer state, config.yaml, tokenizer/, COMPLETE, latest."""
    save = tmp_path_factory.mktemp("sharded") / "save"
    state = {"step": 7, "updates": 7, "consumed_samples": 56, "optimizer": {"x": 1}, "rng": {"y": 2}, "config": {}}
    folder = _write_sharded(save / STEP, full, 2, 2, trainer_state=state)
    _write_tokenizer(folder / "tokenizer")
    (save / LATEST).write_text(STEP + "\n")
    return folder


def _ids():
    return torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_ids())[0]


def _assert_equal_states(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# ---- the format ------------------------------------------------------------------------------------
def test_file_names_and_layout(tmp_path):
    assert model_file_name(0, 0, 1, 1) == "model.safetensors"
    assert model_file_name(1, 0, 2, 1) == "model_tp01_pp00.safetensors"
    assert model_file_name(3, 11, 4, 12) == "model_tp03_pp11.safetensors"
    with pytest.raises(ValueError, match=r"rank \(2, 0\) is outside a tp=2 x pp=1 layout"):
        model_file_name(2, 0, 2, 1)
    assert read_layout(tmp_path) == dict(tensor_parallel=1, pipeline_parallel=1, data_parallel=1, zero_stage=0)
    write_layout(tmp_path, 4, 2)
    assert json.loads((tmp_path / LAYOUT_FILE).read_text()) == {
        "format": 1,
        "tensor_parallel": 4,
        "pipeline_parallel": 2,
        "data_parallel": None,
        "zero_stage": None,
    }
    write_layout(tmp_path, 2, 1, dp=8, zero_stage=1)
    assert read_layout(tmp_path) == dict(tensor_parallel=2, pipeline_parallel=1, data_parallel=8, zero_stage=1)
    with pytest.raises(ValueError, match="tensor-parallel size must be a positive integer"):
        write_layout(tmp_path, 0, 1)


def test_shard_files_carry_config_and_ranks(sharded):
    metadata = read_model_metadata(sharded / "model_tp01_pp00.safetensors")
    assert json.loads(metadata["gptcore_config"]) == {
        k: v for k, v in CONFIG.to_dict().items() if k != "use_gptcore_ops"
    }
    assert {k: metadata[k] for k in ("tp_rank", "pp_rank", "tensor_parallel", "pipeline_parallel")} == {
        "tp_rank": "1",
        "pp_rank": "0",
        "tensor_parallel": "2",
        "pipeline_parallel": "2",
    }


def test_save_model_shard_rejects_a_wrong_state(tmp_path, full):
    shards = split(full, CONFIG, 2, 1)
    with pytest.raises(ValueError, match=r"shard \(0, 0\) of tp=2 x pp=2 does not match"):
        save_model_shard(shards[(0, 0)], CONFIG, tmp_path, 0, 0, 2, 2)
    with pytest.raises(ValueError, match="has shape"):
        save_model_shard(shards[(0, 0)] | {"transformer.wpe.weight": full["transformer.wpe.weight"][:, :8]},
                         CONFIG, tmp_path, 0, 0, 2, 1)  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_load_model_shards_round_trip(sharded, full):
    shards, config, layout = load_model_shards(sharded)
    assert config == CONFIG  # use_gptcore_ops is not saved: off unless asked for (head dim 16 needs it off)
    assert load_model_shards(sharded, n_positions=16)[1].n_positions == 16
    assert layout == dict(tensor_parallel=2, pipeline_parallel=2, data_parallel=2, zero_stage=1)
    expected = split(full, CONFIG, 2, 2)
    assert sorted(shards) == sorted(expected)
    for key in expected:
        _assert_equal_states(shards[key], expected[key])


def test_load_full_state(sharded, full, tmp_path):
    state, config = load_full_state(sharded)
    assert config == CONFIG
    _assert_equal_states(state, full)
    # an unsharded folder (no layout.json, model.safetensors) reads alike
    save_model_state(full, CONFIG, tmp_path / "model.safetensors")
    state, _ = load_full_state(tmp_path)
    _assert_equal_states(state, full)


@pytest.mark.parametrize("tp,pp", [(2, 2), (4, 1), (1, 4), (1, 1)])
def test_load_shard_for_another_layout(sharded, full, tp, pp):
    expected = split(full, CONFIG, tp, pp)
    for (t, p), want in expected.items():
        state, config = load_shard_for(sharded, tp, pp, t, p)
        assert config == CONFIG
        _assert_equal_states(state, want)


def test_load_shard_for_impossible_layout(sharded):
    with pytest.raises(ValueError, match=r"cannot load under tp=3 x pp=1: .*n_head \(4\) must be divisible"):
        load_shard_for(sharded, 3, 1, 0, 0)
    with pytest.raises(ValueError, match="rank"):
        load_shard_for(sharded, 2, 1, 2, 0)


# ---- every loader reads a sharded checkpoint as the full model ---------------------------------------
def test_load_any_sharded_folder_and_save_folder(sharded, model):
    assert resolve(sharded) == ("sharded", sharded)
    assert resolve(sharded.parent) == ("sharded", sharded)  # the save folder: its latest checkpoint
    for source in (sharded, sharded.parent):
        loaded = load_any(source, **TORCH_OPS)
        assert torch.equal(_logits(loaded), _logits(model))


def test_load_for_inference_finds_the_tokenizer(sharded, model):
    # bf16 on CPU runs on PyTorch ops, which any head dim suits
    loaded, tokenizer = load_for_inference(sharded.parent, device="cpu", dtype="bf16")
    assert tokenizer is not None and tokenizer.encode("hello world") == [2, 3]
    assert not loaded.training and next(loaded.parameters()).dtype == torch.bfloat16
    _assert_equal_states(loaded.state_dict(), {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})


def test_unsharded_checkpoint_with_layout_is_a_model_file(tmp_path, full):
    folder = tmp_path / STEP
    folder.mkdir()
    save_model_shard(full, CONFIG, folder, 0, 0, 1, 1)
    write_layout(folder, 1, 1, dp=4, zero_stage=0)
    (folder / COMPLETE).write_text("7\n")
    assert resolve(tmp_path) == ("gptcore", folder / "model.safetensors")


# ---- gptcore convert ---------------------------------------------------------------------------------
def _convert(capsys, *argv):
    code = cli.main(["convert", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_reshard_chain_keeps_logits(sharded, model, tmp_path, capsys):
    source = sharded.parent
    for i, (tp, pp) in enumerate([(1, 1), (4, 1), (1, 2)]):
        out = tmp_path / f"out{i}"
        code, printed, err = _convert(
            capsys, "reshard", "--checkpoint", str(source), "--tensor-parallel", str(tp),
            "--pipeline-parallel", str(pp), "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        folder = out / STEP
        assert printed.startswith(f"{folder}: tp={tp} x pp={pp}, {tp * pp} model file")
        assert (folder / COMPLETE).is_file() and (out / LATEST).read_text().strip() == STEP
        assert json.loads((folder / LAYOUT_FILE).read_text()) == {
            "format": 1,
            "tensor_parallel": tp,
            "pipeline_parallel": pp,
            "data_parallel": None,
            "zero_stage": None,
        }
        names = sorted(p.name for p in folder.glob("model*.safetensors"))
        assert names == sorted(model_file_name(t, p, tp, pp) for t in range(tp) for p in range(pp))
        trainer_state = load_trainer_state(folder)
        assert trainer_state == {"step": 7, "updates": 7, "consumed_samples": 56, "config": {}}
        assert (folder / "config.yaml").read_text() == "lr: 0.001\n"
        assert (folder / "tokenizer" / "tokenizer.json").is_file()
        assert torch.equal(_logits(load_any(out, **TORCH_OPS)), _logits(model))
        source = folder  # chain: the next reshard reads this one (a step folder this time)
    assert resolve(tmp_path / "out0") == ("gptcore", tmp_path / "out0" / STEP / "model.safetensors")


def test_reshard_checkpoint_without_trainer_state(tmp_path, full, model):
    source = _write_sharded(tmp_path / "src" / STEP, full, 1, 2)
    folder = reshard_checkpoint(source, tmp_path / "dst", 2, 1)
    assert folder == tmp_path / "dst" / STEP
    assert not has_trainer_state(folder) and not (folder / "tokenizer").exists()
    assert torch.equal(_logits(load_any(folder, **TORCH_OPS)), _logits(model))


def test_cli_hf_export_of_sharded_checkpoint(sharded, model, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    code, printed, err = _convert(capsys, "hf-export", "--checkpoint", str(sharded), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    assert printed.startswith(f"{tmp_path / 'hf'}: 4 layers, 4 heads, 64 wide, vocab 256")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(_ids()).logits, _logits(model), atol=1e-5, rtol=0)


# ---- errors ------------------------------------------------------------------------------------------
def test_missing_shard_file(tmp_path, full, capsys):
    folder = _write_sharded(tmp_path / "save" / STEP, full, 2, 2)
    (folder / "model_tp01_pp01.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing model file\(s\) model_tp01_pp01.safetensors \(layout.json"
                       r" says a tp=2 x pp=2 checkpoint"):  # fmt: skip
        load_model_shards(folder)
    with pytest.raises(FileNotFoundError, match="model_tp01_pp01"):
        load_any(tmp_path / "save", **TORCH_OPS)
    code, _, err = _convert(capsys, "hf-export", "--checkpoint", str(folder), "--out", str(tmp_path / "hf"))
    assert code == 2 and err.startswith("gptcore convert: error: ") and "model_tp01_pp01.safetensors" in err
    code, _, err = _convert(capsys, "reshard", "--checkpoint", str(folder), "--out", str(tmp_path / "out"))
    assert code == 2 and "missing model file(s)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_shards_without_layout_file(tmp_path, full):
    folder = _write_sharded(tmp_path / STEP, full, 2, 1)
    (folder / LAYOUT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"without layout.json, it is a tp=1 x pp=1 checkpoint; model files"
                       r" present: model_tp00_pp00.safetensors, model_tp01_pp00.safetensors"):  # fmt: skip
        load_full_state(folder)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": 2, "tensor_parallel": 1, "pipeline_parallel": 1}', "format 2; this gptcore reads format 1"),
        ('{"format": 1, "tensor_parallel": 0, "pipeline_parallel": 1}', "'tensor_parallel' must be a positive"),
        ('{"format": 1, "tensor_parallel": 2}', "'pipeline_parallel' must be a positive integer, got None"),
        ('{"format": 1, "tensor_parallel": 2, "pipeline_parallel": 1, "zero_stage": -1}', "'zero_stage' must"),
    ],
)
def test_bad_layout_file(tmp_path, full, capsys, text, match):
    folder = _write_sharded(tmp_path / STEP, full, 2, 1)
    (folder / LAYOUT_FILE).write_text(text)
    with pytest.raises(ValueError, match=match):
        read_layout(folder)
    with pytest.raises(ValueError, match=match):
        load_any(folder, **TORCH_OPS)
    code, _, err = _convert(capsys, "reshard", "--checkpoint", str(folder), "--out", str(tmp_path / "out"))
    assert code == 2 and err.startswith(f"gptcore convert: error: {folder / LAYOUT_FILE}: ")


def test_shards_of_different_models(tmp_path, full):
    folder = _write_sharded(tmp_path / STEP, full, 2, 1)
    other = GPTConfig(**(CONFIG.to_dict() | {"layer_norm_eps": 1e-6}))
    save_model_shard(split(full, other, 2, 1)[(1, 0)], other, folder, 1, 0, 2, 1)
    with pytest.raises(ValueError, match=r"hold different model configs \(differing in \['layer_norm_eps'\]\)"):
        load_model_shards(folder)


def test_shard_metadata_must_match_its_file(tmp_path, full):
    folder = _write_sharded(tmp_path / STEP, full, 2, 1)
    (folder / "model_tp00_pp00.safetensors").rename(folder / "tmp")
    (folder / "model_tp01_pp00.safetensors").rename(folder / "model_tp00_pp00.safetensors")
    (folder / "tmp").rename(folder / "model_tp01_pp00.safetensors")
    with pytest.raises(ValueError, match=r"metadata says .*'tp_rank': '1'.* the file name say"):
        load_model_shards(folder)


def test_reshard_to_impossible_layout(sharded, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"cannot reshard .* to tp=3 x pp=1: .*n_head \(4\) must be divisible"):
        reshard_checkpoint(sharded, tmp_path / "out", 3, 1)
    code, _, err = _convert(
        capsys, "reshard", "--checkpoint", str(sharded), "--tensor-parallel", "3", "--out", str(tmp_path / "out")
    )
    assert code == 2
    assert err == f"gptcore convert: error: cannot reshard {sharded} to tp=3 x pp=1: tensor parallel: n_head (4)" \
        " must be divisible by the tensor-parallel size (3)\n"  # fmt: skip
    code, _, err = _convert(
        capsys, "reshard", "--checkpoint", str(sharded), "--pipeline-parallel", "3", "--out", str(tmp_path / "out")
    )
    assert code == 2 and "n_layer (4) is not divisible by 3 stages" in err
    code, _, err = _convert(capsys, "reshard", "--checkpoint", str(sharded), "--tensor-parallel", "0", "--out", "x")
    assert code == 2 and "tensor-parallel size must be a positive integer, got 0" in err
    assert not (tmp_path / "out").exists()


def test_reshard_refuses_to_replace_its_source(sharded, capsys):
    code, _, err = _convert(capsys, "reshard", "--checkpoint", str(sharded), "--out", str(sharded.parent))
    assert code == 2 and "would replace" in err
    assert (sharded / COMPLETE).is_file()


def test_reshard_without_checkpoint(tmp_path, capsys):
    code, _, err = _convert(capsys, "reshard", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2 and err == f"gptcore convert: error: {tmp_path}: no complete checkpoint here" \
        " (expected a step_N folder or a save folder)\n"  # fmt: skip
