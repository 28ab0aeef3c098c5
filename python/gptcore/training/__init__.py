"""Training: the config, the LR schedule and loss scaler, the optimizer step, and the Trainer on
any process layout (checkpoints: gptcore.checkpoint)."""

from gptcore.training.config import ConfigError, TrainConfig, load_config
from gptcore.training.processes import launched_world_size
from gptcore.training.schedule import LossScaler, lr_at
from gptcore.training.trainer import Trainer

__all__ = ["ConfigError", "LossScaler", "TrainConfig", "Trainer", "launched_world_size", "load_config", "lr_at"]
