"""State files (checkpoint.state_file): exact round trips of optimizer, RNG and loss scaler states
without pickle, damaged files refused with the file's name, a malicious older trainer.pt refused
without running it, and older torch.save checkpoints still resuming bit for bit."""

import json
import math
import os
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch
from test_training import corpus, losses, quiet, small  # noqa: F401 (corpus is a fixture)

import gptcore.optim
from gptcore import cli
from gptcore.checkpoint import (
    has_trainer_state,
    load_rank_state,
    load_state,
    load_trainer_state,
    save_rank_state,
    save_state,
    write_layout,
)
from gptcore.parallel.testing import run_distributed
from gptcore.training import LossScaler, Trainer, load_config
from gptcore.training.checkpointing import rng_state, set_rng_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_same(a, b, where="state"):
    """Equal values of the same types: tuple is not list, int is not float, dtypes and dict key types match."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        assert [type(k) for k in a] == [type(k) for k in b], where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and b.device.type == "cpu", where
        assert torch.equal(a.cpu(), b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())), where
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b)), where


def round_trip(state, tmp_path):
    save_state(state, tmp_path / "state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    loaded = load_state(tmp_path / "state")
    assert_same(state, loaded)
    return loaded


def test_plain_values_round_trip(tmp_path):
    state = {
        "ints": [0, -1, 2**62, 2**100],
        "floats": [0.1, -0.0, 1.0, 1e308, math.inf, -math.inf, math.nan],
        "tuple": (1, "a", (None, True, False), []),
        7: {"$not_a_tag": {3: "x", "y": (4.5,)}},
        "": {},
        "tensors": [
            torch.arange(12, dtype=torch.int64).view(3, 4)[:, 1],  # a strided view
            torch.tensor(3.5),  # 0-d, like AdamW's step
            torch.randn(2, 3).to(torch.bfloat16),
            torch.tensor([1.0, math.nan, math.inf], dtype=torch.float16),
            torch.zeros(0, 5),
            torch.tensor([True, False]),
            torch.randint(0, 255, (9,), dtype=torch.uint8),
        ],
        "arrays": [
            np.arange(5, dtype=np.uint32),
            np.arange(6, dtype=">i2").reshape(2, 3),
            np.zeros((0,), dtype=np.float64),
            np.float64(2.5),
            np.int32(-3),
            np.bool_(True),
        ],
    }
    state["tensors"].append(state["tensors"][1])  # one tensor twice
    round_trip(state, tmp_path)


@pytest.mark.parametrize("make", [torch.optim.AdamW, gptcore.optim.AdamW], ids=["torch", "gptcore"])
def test_adamw_state_round_trips_and_steps_the_same(make, tmp_path):
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    if make is gptcore.optim.AdamW:  # a half param: a float32 master in the state
        params.append(torch.randn(5, dtype=torch.bfloat16, requires_grad=True))
    groups = [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}]
    optimizer = make(groups, lr=1e-2, betas=(0.9, 0.95))

    def step():
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()

    step()
    step()
    loaded = round_trip(optimizer.state_dict(), tmp_path)
    assert isinstance(loaded["param_groups"][0]["betas"], tuple) and 0 in loaded["state"]
    copies = [p.detach().clone().requires_grad_() for p in params]
    resumed = make([{"params": copies[:1], "weight_decay": 0.1}, {"params": copies[1:], "weight_decay": 0.0}], lr=1.0)
    resumed.load_state_dict(loaded)
    torch.manual_seed(1)
    step()
    torch.manual_seed(1)
    for p in copies:
        p.grad = torch.randn_like(p)
    resumed.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def test_rng_states_and_loss_scaler_round_trip(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.standard_normal()  # numpy's state then holds a cached gaussian
    scaler = LossScaler(2.0**16, dynamic=True)
    scaler.update(True)
    scaler.update(False)
    state = {"rng": rng_state(), "scaler": scaler.state_dict()}
    loaded = round_trip(state, tmp_path)
    draws = (torch.rand(5), np.random.standard_normal(4), random.random())
    set_rng_state(loaded["rng"])
    again = (torch.rand(5), np.random.standard_normal(4), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    other = LossScaler(1.0, dynamic=True)
    other.load_state_dict(loaded["scaler"])
    assert other.state_dict() == scaler.state_dict()


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"a": [1, object()]}, r"state\['a'\]\[1\] is a object"),
        ({"a": {1.5: 2}}, r"state\['a'\] has the key 1.5"),
        ({"a": {True: 2}}, r"state\['a'\] has the key True"),
        ({"a": np.array(["x"])}, r"state\['a'\] is a numpy <U1 value"),
        ({"a": {"b": torch.nn.Linear(1, 1)}}, r"state\['a'\]\['b'\] is a Linear"),
    ],
)
def test_other_values_are_refused_naming_where(state, where, tmp_path):
    with pytest.raises(TypeError, match=where):
        save_state(state, tmp_path / "state")


def _damage(tmp_path, json_text=None, tensors=None):
    save_state({"x": torch.ones(2), "y": 1}, tmp_path / "state")
    if json_text is not None:
        (tmp_path / "state.json").write_text(json_text)
    if tensors is not None:
        (tmp_path / "state.safetensors").write_bytes(tensors)


@pytest.mark.parametrize(
    ("json_text", "tensors", "bad"),
    [
        ("{not json", None, "state.json"),
        ("", None, "state.json"),
        ('{"format": 1, "state": NaN}', None, "state.json"),
        ('{"format": 2, "state": {}}', None, "state.json"),
        ("[1, 2]", None, "state.json"),
        ('{"format": 1, "state": {"$eval": "print(1)"}}', None, "state.json"),
        ('{"format": 1, "state": {"$tensor": "9"}}', None, "state.json"),
        ('{"format": 1, "state": {"$tensor": "0", "x": 1}}', None, "state.json"),
        ('{"format": 1, "state": {"$ndarray": "0", "dtype": "|O", "shape": [2]}}', None, "state.json"),
        ('{"format": 1, "state": {"$dict": [[1.5, 2]]}}', None, "state.json"),
        ('{"format": 1, "state": {"$float": "1e999"}}', None, "state.json"),
        ('{"format": 1, "state": ' + "[" * 100000 + "]" * 100000 + "}", None, "state.json"),
        ('{"format": 1, "state": {"y": 1}}', None, "state.safetensors"),  # a tensor nobody names
        (None, b"\x00\x01garbage", "state.safetensors"),
    ],
)
def test_damaged_state_files_are_one_line_value_errors(json_text, tensors, bad, tmp_path):
    _damage(tmp_path, json_text, tensors)
    with pytest.raises(ValueError) as raised:
        load_state(tmp_path / "state")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / bad}: not a readable gptcore state file") and "\n" not in message
    error = raised.value  # no chained traceback from json or safetensors
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_garbage_trainer_state_json(tmp_path):
    save_state({"step": 1}, tmp_path / "trainer_state")
    (tmp_path / "trainer_state.json").write_text("garbage")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'trainer_state.json'}: not a readable") as raised:
        load_trainer_state(tmp_path)
    assert "\n" not in str(raised.value)


# ---- an older gptcore's pickles ----------------------------------------------------------------
class OpensAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsAShellCommand:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _write_malicious(kind, path, pwned):
    if kind == "open":
        torch.save({"step": 1, "rng": OpensAFile(str(pwned))}, path)
    elif kind == "system":
        torch.save({"step": 1, "optimizer": RunsAShellCommand(str(pwned))}, path)
    else:  # a bare pickle, not torch.save's zip
        path.write_bytes(pickle.dumps(RunsAShellCommand(str(pwned)), protocol=2))


@pytest.mark.parametrize("kind", ["open", "system", "bare"])
def test_a_malicious_trainer_pt_is_refused_without_running_it(kind, tmp_path):
    pwned = tmp_path / "pwned"
    _write_malicious(kind, tmp_path / "trainer.pt", pwned)
    with pytest.raises(ValueError) as raised:
        load_trainer_state(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'trainer.pt'}: ") and "\n" not in message
    assert f"init_from={tmp_path}" in message and message.endswith(f"'{tmp_path / 'trainer_state'}')")
    assert not pwned.exists()
    _write_malicious(kind, tmp_path / "rank_00003.pt", pwned)
    with pytest.raises(ValueError, match="rank_00003.pt: "):
        load_rank_state(tmp_path, 3)
    assert not pwned.exists()


def _to_legacy(folder, ranks=()):
    """Rewrite a checkpoint's state files as an older gptcore wrote them: torch.save pickles."""
    torch.save(load_trainer_state(folder), folder / "trainer.pt")
    for rank in ranks:
        torch.save(load_rank_state(folder, rank), folder / f"rank_{rank:05d}.pt")
    for name in ["trainer_state", *(f"rank_{r:05d}" for r in ranks)]:
        for suffix in (".json", ".safetensors"):
            (folder / (name + suffix)).unlink()
    (folder / "COMPLETE").write_text(f"{int(folder.name.split('_')[1])}\n")  # its marker then: the step, no manifest


def test_a_malicious_trainer_pt_in_a_run_is_refused_by_train_and_the_cli(corpus, tmp_path, capsys):  # noqa: F811
    cfg = small(corpus, train_steps=1, warmup_steps=0, save=str(tmp_path / "run"))
    quiet(cfg).train()
    folder = tmp_path / "run" / "step_00000001"
    _to_legacy(folder)
    pwned = tmp_path / "pwned"
    _write_malicious("open", folder / "trainer.pt", pwned)
    with pytest.raises(ValueError, match="trainer.pt: written by an older gptcore with pickle, and it holds a ref"):
        quiet(cfg | {"train_steps": 2})
    run = cfg | {"train_steps": 2, "save": str(tmp_path / "other"), "load": str(folder)}
    overrides = [f"{key}={value}" for key, value in run.items()]
    assert cli.main(["train", "--config", "tiny-cpu", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gptcore train: error: {folder / 'trainer.pt'}: written by an older gptcore with pickle")
    assert "\n" not in err and "Traceback" not in err
    assert not pwned.exists()


def test_an_older_checkpoint_resumes_exactly(corpus, tmp_path):  # noqa: F811
    """trainer.pt holding the optimizer and RNG states, as one process wrote it: bit for bit, dropout included."""
    cfg = small(corpus, train_steps=6, dropout=0.1, attn_dropout=0.1)
    whole = quiet(cfg | {"save": str(tmp_path / "a")}).train()
    part = quiet(cfg | {"save": str(tmp_path / "b")}).train(max_steps=3)
    folder = tmp_path / "b" / "step_00000003"
    _to_legacy(folder)
    assert not has_trainer_state(folder / "missing") and has_trainer_state(folder)
    resumed = quiet(cfg | {"save": str(tmp_path / "b")})
    assert resumed.resumed_from == folder and resumed.step == 3
    assert losses(part + resumed.train()) == losses(whole)
    assert (tmp_path / "b" / "step_00000006" / "trainer_state.json").is_file()  # saved anew without pickle


def test_an_older_distributed_checkpoint_resumes_exactly(corpus, tmp_path):  # noqa: F811
    """trainer.pt without the optimizer and rank_00000.pt with it, as a tp=pp=1, no-ZeRO run wrote them."""
    cfg = small(corpus, train_steps=6, dropout=0.0, attn_dropout=0.0)
    whole = quiet(cfg | {"save": str(tmp_path / "a")}).train()
    part = quiet(cfg | {"save": str(tmp_path / "b")}).train(max_steps=3)
    folder = tmp_path / "b" / "step_00000003"
    trainer_state = load_trainer_state(folder)
    save_rank_state({"rng": trainer_state.pop("rng"), "optimizer": trainer_state.pop("optimizer")}, folder, 0)
    save_state(trainer_state, folder / "trainer_state")
    write_layout(folder, 1, 1, 2, 0)
    _to_legacy(folder, ranks=[0])
    assert sorted(p.name for p in folder.glob("*.pt")) == ["rank_00000.pt", "trainer.pt"]
    lines = []
    resumed = Trainer(load_config(None, cfg | {"save": str(tmp_path / "b")}), log=lines.append)
    assert resumed.step == 3 and not any("fresh AdamW" in line for line in lines)
    assert losses(part + resumed.train()) == losses(whole)


def _save_run(rank, world, cfg, steps):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    return losses(trainer.train(max_steps=steps)), trainer.step


def test_an_older_zero_checkpoint_resumes_exactly(corpus, tmp_path):  # noqa: F811
    """dp=2 with ZeRO 1: trainer.pt and every rank's rank_NNNNN.pt (its optimizer shard) as pickles."""
    cfg = small(corpus, train_steps=4, zero_stage=1, dropout=0.0, attn_dropout=0.0)
    whole, _ = run_distributed(_save_run, 2, cfg | {"save": str(tmp_path / "a")}, 4)[0]
    part, _ = run_distributed(_save_run, 2, cfg | {"save": str(tmp_path / "b")}, 2)[0]
    _to_legacy(tmp_path / "b" / "step_00000002", ranks=[0, 1])
    rest, step = run_distributed(_save_run, 2, cfg | {"save": str(tmp_path / "b")}, 2)[0]
    assert step == 4 and part + rest == whole


def test_numpy_1_pickles_read(tmp_path):
    """numpy 1.x pickled its arrays as numpy.core.multiarray._reconstruct (2.x: numpy._core)."""
    state = {"rng": rng_state()}
    torch.save(state, tmp_path / "new.pt")
    with zipfile.ZipFile(tmp_path / "new.pt") as source, zipfile.ZipFile(tmp_path / "trainer.pt", "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            out.writestr(item, data)
    assert_same(state, load_trainer_state(tmp_path))


def test_state_files_are_json_and_safetensors_only(tmp_path):
    save_state({"optimizer": {"state": {0: {"step": torch.tensor(1.0)}}}, "rng": rng_state()}, tmp_path / "s")
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["format"] == 1 and "$dict" in document["state"]["optimizer"]["state"]
    assert (tmp_path / "s.safetensors").read_bytes()[8:9] == b"{"  # safetensors: a length, then a JSON header
