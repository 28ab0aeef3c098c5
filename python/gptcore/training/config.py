"""The training config: one flat dataclass, read from YAML and `key=value` overrides, checked whole
before any work starts so a bad value stops with a message naming the key and the fix."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from gptcore.finetune.lora import LoRAConfig
from gptcore.model import PRESETS, GPTConfig
from gptcore.training.aliases import suggestion

# Model fields a config may set on top of the preset named by `model`.
MODEL_FIELDS = ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "dropout", "attn_dropout", "bias")
PRECISIONS = ("fp32", "bf16", "fp16")
DECAY_STYLES = ("cosine", "linear", "constant", "noam")
RECOMPUTE = ("none", "full", "selective")
CHOICES = {"decay_style": DECAY_STYLES, "precision": PRECISIONS, "recompute": RECOMPUTE}
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (gpu and gpu:N are cuda)"
# Where `--config NAME` looks when NAME is not a file: the installed copy, then a checkout's configs/.
CONFIG_DIRS = (Path(__file__).resolve().parents[1] / "configs", Path(__file__).resolve().parents[3] / "configs")


class ConfigError(ValueError):
    """A training config that cannot run; the message names the key and the fix."""


@dataclass
class TrainConfig:
    # model: a preset (gptcore.model.PRESETS) and fields that override it
    model: str = "tiny"
    vocab_size: int | None = None  # None: the tokenizer's vocabulary size
    n_positions: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    attn_dropout: float | None = None
    bias: bool | None = None
    use_gptcore_ops: bool = True  # False: the same model on plain PyTorch ops
    init_from: str | None = None  # a gptcore model file (.safetensors) or HF GPT-2 directory to start from

    # data: Megatron-style prefixes (a blend "0.3 A 0.7 B" or one prefix); None: the built-in default corpus
    data_path: str | None = None
    tokenizer: str | None = None  # None with the default corpus: its tokenizer
    vocab_file: str | None = None  # Megatron's GPT-2 vocab .json (any name), instead of tokenizer
    merge_file: str | None = None  # its merges .txt; None: found beside the vocab
    split: str = "949,50,1"
    seq_len: int = 128
    eod_mask_loss: bool = False  # no loss on predicting the end-of-document token
    reset_attention_mask: bool = False  # attention stays inside each document (one ends after its eod)
    reset_position_ids: bool = False  # positions restart at 0 after each end-of-document token
    data_cache: str | None = None  # sample-index cache folder; None: $GPTCORE_CACHE/indices

    # batch and schedule
    micro_batch_size: int = 8
    global_batch_size: int = 8  # = micro_batch_size x data-parallel size x gradient accumulation steps
    train_steps: int = 1000
    train_epochs: float | None = None  # passes over the train split; sets train_steps from the data (logged)
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 0
    warmup_ratio: float | None = None  # fraction of decay_steps; overrides warmup_steps when set
    decay_style: str = "cosine"  # cosine, linear, constant; noam: lr * min(n / warmup, sqrt(warmup / n))
    decay_steps: int | None = None  # None: train_steps; after it the lr stays at min_lr

    # optimizer
    weight_decay: float = 0.1  # on 2-D weights only (not biases, not layer norms)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0  # global grad norm; 0 turns clipping off

    # precision and memory
    precision: str = "fp32"  # bf16 / fp16: params and activations in that type, fp32 master weights
    loss_scale: float | None = None  # fp16: a static loss scale; None: dynamic loss scaling
    initial_loss_scale: float = 2.0**16
    min_loss_scale: float = 1.0
    loss_scale_window: int = 1000  # good steps before the scale doubles
    hysteresis: int = 2  # overflows tolerated before the scale halves
    recompute: str = "none"  # full: each block; selective: each block's attention sublayer

    # parallelism: launch with torchrun (or `gptcore train --nproc-per-node N`); the data-parallel size
    # is what the world size leaves: world = data x tensor_parallel x pipeline_parallel
    tensor_parallel: int = 1  # attention heads and MLP columns split over this many ranks
    pipeline_parallel: int = 1  # layers split into this many stages, run by a 1F1B schedule
    sequence_parallel: bool = False  # with tensor_parallel > 1: layer norms and dropout on sequence chunks
    zero_stage: int = 0  # 1: AdamW state sharded over the data-parallel ranks; 2: gradients too; 3: parameters too
    offload_optimizer: bool = False  # with zero_stage >= 1: master weights and AdamW moments in host memory, CPU step
    ddp_bucket_mb: float = 25.0  # gradients all-reduced in buckets of about this size, during the backward

    # eval, logging, checkpoints
    eval_interval: int = 100  # 0: no periodic eval
    eval_steps: int = 10  # micro batches of the validation split per eval
    log_interval: int = 10
    save: str | None = None  # checkpoint folder
    save_interval: int = 0  # 0: save only at the end (and on SIGTERM)
    keep_last: int = 3
    async_save: bool = False  # copy the state to host memory at the step boundary, write it on a background thread
    load: str | None = None  # resume from this folder's latest checkpoint; None: from `save` if it has one
    tensorboard_dir: str | None = None
    log_file: str | None = None  # JSONL metrics; None: <save>/metrics.jsonl when saving
    progress: bool = True
    peak_tflops: float | None = None  # for MFU; None: looked up for known GPUs
    sample_tokens: int = 0  # after training, print a sample of this many tokens
    sample_prompt: str = ""

    # finetuning (`gptcore finetune`): data from `gptcore preprocess --sft` (a loss-mask companion) is
    # read as examples; lora_rank > 0 trains low-rank adapters on the frozen init_from model
    sft_packing: bool = True  # several examples a sequence, each attending only to itself; false: one each
    lora_rank: int = 0  # 0: full finetuning
    lora_alpha: float | None = None  # the adapters' scale is lora_alpha / lora_rank; None: lora_rank
    lora_dropout: float = 0.0
    lora_targets: str = "qkv,attn_out,mlp_in,mlp_out"  # comma-separated: qkv, attn_out, mlp_in, mlp_out

    seed: int = 1234
    device: str = "auto"  # auto, cpu, cuda, cuda:N (gpu: cuda)

    # ---- model --------------------------------------------------------------------------------
    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig: the preset with this config's model fields; vocab_size defaults to the tokenizer's."""
        overrides = {name: getattr(self, name) for name in MODEL_FIELDS if getattr(self, name) is not None}
        overrides.setdefault("vocab_size", vocab_size)
        try:
            return GPTConfig.preset(self.model, use_gptcore_ops=self.use_gptcore_ops, **overrides)
        except ValueError as e:
            raise ConfigError(str(e).replace("GPTConfig.", "")) from None

    def lora_config(self) -> LoRAConfig:
        """The LoRAConfig of lora_rank, lora_alpha, lora_dropout and lora_targets (lora_rank > 0)."""
        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        return LoRAConfig(self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout, targets=targets)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- checks -------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise ConfigError on the first value that cannot work; return self."""
        _check_types(self)
        self.device = device_name(self.device)
        if self.model not in PRESETS:
            raise ConfigError(f"model: unknown preset {self.model!r}; choose from {', '.join(PRESETS)}")
        self.model_config(self.vocab_size or 1)  # shape checks (n_embd % n_head, head dim, dropout ranges)
        positions = self.n_positions or PRESETS[self.model]["n_positions"]
        if self.seq_len > positions and self.init_from is None:  # else checked against init_from's model
            raise ConfigError(
                f"seq_len ({self.seq_len}) exceeds the model's n_positions ({positions}); "
                f"lower seq_len or set n_positions >= {self.seq_len}"
            )
        for name in ("seq_len", "micro_batch_size", "global_batch_size", "train_steps", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "save_interval", "warmup_steps", "eval_steps", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}); the ratio is the number of gradient accumulation steps"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must be in [0, lr = {self.lr}], got {self.min_lr}")
        if self.train_epochs is not None and not self.train_epochs > 0:
            raise ConfigError(f"train_epochs must be > 0 (or unset for train_steps), got {self.train_epochs}")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ConfigError(f"decay_steps must be >= 1 (or unset for train_steps), got {self.decay_steps}")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps_resolved > self.decay_steps_resolved:
            raise ConfigError(
                f"warmup ({self.warmup_steps_resolved} steps) is longer than decay_steps ({self.decay_steps_resolved})"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be > 0, got {self.eps}")
        if self.clip_grad < 0:
            raise ConfigError(f"clip_grad must be >= 0 (0: no clipping), got {self.clip_grad}")
        if self.loss_scale is not None and self.precision != "fp16":
            raise ConfigError(f"loss_scale applies to precision fp16 only (precision is {self.precision}); unset it")
        if self.loss_scale is not None and not self.loss_scale > 0:
            raise ConfigError(f"loss_scale must be > 0, got {self.loss_scale}")
        if not self.initial_loss_scale >= self.min_loss_scale > 0:
            raise ConfigError("need initial_loss_scale >= min_loss_scale > 0")
        if self.loss_scale_window < 1 or self.hysteresis < 1:
            raise ConfigError("loss_scale_window and hysteresis must be >= 1")
        for name in ("tensor_parallel", "pipeline_parallel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(
                f"zero_stage must be 0 (off), 1 (optimizer state sharded), 2 (gradients too) or 3 (parameters too),"
                f" got {self.zero_stage}"
            )
        if self.zero_stage == 3 and self.pipeline_parallel > 1:
            raise ConfigError(
                "zero_stage 3 does not compose with pipeline_parallel > 1; use zero_stage 2 with pipelines"
            )
        if self.offload_optimizer and not self.zero_stage:
            raise ConfigError("offload_optimizer moves the ZeRO optimizer's state to host memory: set zero_stage >= 1")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError("sequence_parallel needs tensor_parallel > 1 (it splits the sequence over those ranks)")
        if self.sequence_parallel and self.seq_len % self.tensor_parallel:
            raise ConfigError(
                f"sequence_parallel: seq_len ({self.seq_len}) must be divisible by tensor_parallel"
                f" ({self.tensor_parallel}); each rank holds seq_len / tensor_parallel positions"
            )
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be >= 0 (0: full finetuning), got {self.lora_rank}")
        if self.lora_rank:
            if self.init_from is None:
                raise ConfigError(
                    "lora_rank is set but init_from is not: LoRA adapts a pretrained model; name it with init_from"
                )
            try:
                self.lora_config()
            except ValueError as e:
                raise ConfigError(f"lora: {e}") from None
        if not self.ddp_bucket_mb > 0:
            raise ConfigError(f"ddp_bucket_mb must be > 0, got {self.ddp_bucket_mb}")
        if self.tokenizer_source() is not None and self.data_path is None:
            raise ConfigError("tokenizer is set but data_path is not; the default corpus brings its own tokenizer")
        return self

    def tokenizer_source(self) -> str | list[str] | None:
        """What load_tokenizer takes: tokenizer, or Megatron's vocab_file (or a vocab tokenizer=) + merge_file."""
        if self.vocab_file is not None and self.tokenizer is not None:
            raise ConfigError("tokenizer and vocab_file name the same thing; set one, not both")
        vocab = self.vocab_file or self.tokenizer
        if self.merge_file is None:
            return vocab
        if vocab is None:
            raise ConfigError("merge_file is set but vocab_file is not; add vocab_file=PATH (the GPT-2 vocab .json)")
        return [vocab, self.merge_file]

    @property
    def decay_steps_resolved(self) -> int:
        return self.train_steps if self.decay_steps is None else self.decay_steps

    @property
    def warmup_steps_resolved(self) -> int:
        if self.warmup_ratio is not None:
            return round(self.warmup_ratio * self.decay_steps_resolved)
        return self.warmup_steps

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // self.micro_batch_size


def launch_error(cfg: TrainConfig) -> ConfigError:
    """The error for a model-parallel config run as one process, not launched as several."""
    return ConfigError(
        f"tensor_parallel {cfg.tensor_parallel} x pipeline_parallel {cfg.pipeline_parallel} needs that many"
        " processes (or a multiple): launch with `gptcore train --nproc-per-node N ...` or"
        " `torchrun --nproc-per-node N -m gptcore train ...`"
    )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = ""
        if name == "recompute" and value in (1, True, "1", "true"):  # PaddleNLP's recompute is a switch
            hint = " (PaddleNLP's recompute=1 is recompute=full)"
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}{hint}")


def device_name(name: str) -> str:
    """The device a config or command names, in torch's spelling (PaddleNLP's gpu is cuda); ConfigError
    for anything but auto, cpu, cuda and cuda:N. Whether that device exists is checked where it is used."""
    match = re.fullmatch(r"(auto|cpu|cuda|gpu)(?::(\d+))?", str(name).strip().lower())
    if match is None or (match[2] is not None and match[1] in ("auto", "cpu")):
        raise ConfigError(f"device {name!r}: gptcore runs on {DEVICE_FORMS}")
    kind = "cuda" if match[1] == "gpu" else match[1]
    return kind if match[2] is None else f"{kind}:{int(match[2])}"


def check_device(name: str) -> str:
    """device_name(name), and ConfigError when it names a CUDA device this machine does not have."""
    device = device_name(name)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device is visible; use cpu")
    index, count = device.partition(":")[2], torch.cuda.device_count() if device.startswith("cuda") else 0
    if index and int(index) >= count:
        raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    return device


def _allowed_types(field: dataclasses.Field) -> tuple[tuple[type, ...], bool]:
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = typing.get_args(hint) or (hint,)
    return tuple(a for a in args if a is not type(None)), type(None) in args


def _check_types(cfg: TrainConfig) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in CHOICES:
            _check_choice(f.name, value, CHOICES[f.name])
            continue
        types, optional = _allowed_types(f)
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{f.name} cannot be null")
        if float in types and isinstance(value, int | str) and not isinstance(value, bool):
            try:  # YAML 1.1 reads 3e-4 (no dot) as a string
                setattr(cfg, f.name, float(value))
                continue
            except ValueError:
                pass
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types) + (" or null" if optional else "")
            raise ConfigError(f"{f.name} must be {expected}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: unknown config key {key!r}; {suggestion(key, [f.name for f in fields(TrainConfig)])}")


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A file path, or the name of a shipped config ("tiny-cpu", "gpt2-small.yaml")."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for folder in CONFIG_DIRS:
        if (folder / stem).is_file() and (path.parent == Path(".") or path.parent.name == "configs"):
            return folder / stem
    shipped = sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(f"config {str(name)!r} not found; give a YAML file or one of: {', '.join(shipped)}")


def parse_overrides(items: list[str]) -> dict:
    """["lr=3e-4", "save=out"] -> {"lr": 0.0003, "save": "out"}; values are parsed as YAML scalars."""
    import yaml

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def config_values(path: str | os.PathLike | None = None, overrides: dict | list[str] | None = None) -> dict:
    """The keys and values of a YAML file (flat keys; `null` for None) with overrides on top, unknown
    keys refused, the values not yet checked (load_config checks them)."""
    import yaml

    values: dict = {}
    names = {f.name for f in fields(TrainConfig)}
    if path is not None:
        file = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping of key: value, got {type(loaded).__name__}")
        values = loaded or {}
        for key in values:
            if key not in names:
                raise _unknown_key(key, str(file))
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for key in overrides or {}:
        if key not in names:
            raise _unknown_key(key, "override")
    return values | (overrides or {})


def load_config(path: str | os.PathLike | None = None, overrides: dict | list[str] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file (flat keys; `null` for None) and overrides, validated."""
    return TrainConfig(**config_values(path, overrides)).validate()
