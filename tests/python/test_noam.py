"""ModelScope's noam schedule (Megatron's inverse-square-root, fairseq's inverse_sqrt) and
train_epochs: the number of steps derived from the data and the global batch, and logged."""

import math

import pytest
from test_finetune import _cfg, task  # noqa: F401 (a fixture)
from test_training import corpus, small  # noqa: F401 (a fixture)

from gptcore.data import IndexedDataset, SFTDataset, loss_mask_prefix, parse_split
from gptcore.training import ConfigError, Trainer, load_config, lr_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def megatron_inverse_square_root(num_steps: int, max_lr: float, min_lr: float, warmup: int) -> float:
    """Megatron-LM's OptimizerParamScheduler.get_lr for lr_decay_style 'inverse-square-root' (init_lr 0)."""
    if warmup > 0 and num_steps <= warmup:
        return max_lr * num_steps / warmup
    warmup = max(warmup, 1)
    return max(min_lr, max_lr * warmup**0.5 / max(num_steps, 1) ** 0.5)


def fairseq_inverse_sqrt(num_updates: int, lr: float, warmup_updates: int) -> float:
    """fairseq's InverseSquareRootSchedule with warmup_init_lr 0."""
    if num_updates < warmup_updates:
        return lr * num_updates / warmup_updates
    return lr * warmup_updates**0.5 * num_updates**-0.5


@pytest.mark.parametrize("warmup", [0, 1, 4, 50])
def test_noam_is_megatrons_inverse_square_root(warmup):
    for step in range(300):
        expected = megatron_inverse_square_root(step + 1, 3e-4, 1e-5, warmup)
        assert lr_at(step, 3e-4, 1e-5, warmup, 100, "noam") == pytest.approx(expected, rel=1e-12)


def test_noam_peaks_at_the_end_of_the_warmup_and_ignores_decay_steps():
    lrs = [lr_at(s, 1.0, 0.0, 10, 20, "noam") for s in range(1000)]
    assert max(lrs) == lrs[9] == 1.0
    for s in range(1, 1000):  # lr * min(n / w, sqrt(w / n)) for n = s + 1, as fairseq counts updates
        assert lrs[s] == pytest.approx(fairseq_inverse_sqrt(s + 1, 1.0, 10), rel=1e-12)
        assert lrs[s] == pytest.approx(min((s + 1) / 10, math.sqrt(10 / (s + 1))), rel=1e-12)
    assert lrs[999] == pytest.approx(0.1)  # still falling long past decay_steps
    assert lr_at(10**6, 1.0, 0.01, 10, 20, "noam") == 0.01  # never below min_lr


def test_noam_in_a_run(corpus):  # noqa: F811
    cfg = load_config(None, small(corpus, decay_style="noam", warmup_steps=2, train_steps=5, min_lr=0.0))
    trainer = Trainer(cfg, log=lambda line: None)
    records = [r for r in trainer.train() if "loss" in r]
    assert [r["lr"] for r in records] == pytest.approx([1e-2 * min(n / 2, (2 / n) ** 0.5) for n in range(1, 6)])


def test_train_epochs_of_sft_data(task):  # noqa: F811
    prefix, tokenizer, _ = task
    lines = []
    cfg = load_config(None, _cfg(task, train_epochs=2, train_steps=1000, sft_packing=False))
    trainer = Trainer(cfg, log=lines.append)
    data = IndexedDataset(prefix)
    documents = parse_split("90,10,0", data.num_documents)[0]
    one_epoch = len(SFTDataset(data, IndexedDataset(loss_mask_prefix(prefix)), documents, None, 32, 0, 2, pack=False))
    assert one_epoch == len(documents)  # one example a sample
    assert trainer.cfg.train_steps == math.ceil(2 * one_epoch / 8)
    assert (
        f"train_epochs 2: {one_epoch:,} samples an epoch / global batch 8 -> train_steps={trainer.cfg.train_steps}"
        in lines
    )


def test_train_epochs_of_pretraining_data(corpus):  # noqa: F811
    prefix, _ = corpus
    data = IndexedDataset(prefix)
    documents = parse_split("949,50,1", data.num_documents)[0]
    sequences = data.document_indices[documents.start], data.document_indices[documents.stop]
    tokens = int(sum(data.sequence_lengths[sequences[0] : sequences[1]]))
    lines = []
    trainer = Trainer(load_config(None, small(corpus, train_epochs=0.5)), log=lines.append)
    assert trainer.cfg.train_steps == math.ceil(0.5 * ((tokens - 1) // 32) / 4)
    assert any(line.startswith("train_epochs 0.5: ") for line in lines)


def test_train_epochs_checked():
    with pytest.raises(ConfigError, match=r"train_epochs must be > 0"):
        load_config(None, {"train_epochs": 0})
    assert load_config(None, {"decay_style": "noam"}).decay_style == "noam"
