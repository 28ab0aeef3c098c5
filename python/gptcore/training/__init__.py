"""Pretraining: the config, the LR schedule and loss scaler and the Trainer (checkpoints: gptcore.checkpoint)."""

from gptcore.training.config import ConfigError, TrainConfig, load_config
from gptcore.training.schedule import LossScaler, lr_at
from gptcore.training.trainer import Trainer

__all__ = ["ConfigError", "LossScaler", "TrainConfig", "Trainer", "load_config", "lr_at"]
