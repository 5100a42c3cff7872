"""aigc: train, sample and evaluate generative models from Hydra configs."""

__version__ = "0.1.0"
