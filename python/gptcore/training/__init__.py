"""Pretraining: the config, the LR schedule and loss scaler, checkpoints and the Trainer."""

from gptcore.training.checkpoint import find_checkpoint
from gptcore.training.config import ConfigError, TrainConfig, load_config
from gptcore.training.schedule import LossScaler, lr_at
from gptcore.training.trainer import Trainer

__all__ = ["ConfigError", "LossScaler", "TrainConfig", "Trainer", "find_checkpoint", "load_config", "lr_at"]
