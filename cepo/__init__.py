"""cepo: Contrastive Evidence Policy Optimization and its baselines for RLVR."""

__version__ = "0.1.0"
