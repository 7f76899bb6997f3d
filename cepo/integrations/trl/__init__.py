"""The single-machine engine: TRL's GRPOTrainer with CEPO/RLSD token credit."""

from cepo.integrations.trl.config import CEPOGRPOConfig
from cepo.integrations.trl.rewards import make_math_reward
from cepo.integrations.trl.trainer import CEPOTrainer

__all__ = ["CEPOGRPOConfig", "CEPOTrainer", "make_math_reward"]
