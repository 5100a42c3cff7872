"""aigc: train, sample and evaluate generative models from Hydra configs.

From Python:
    import aigc_cli as aigc
    model = aigc.load("outputs/<run>")        # or an `aigc export` folder, or a checkpoint
    result = model.sample(16, seed=0)         # result.images in [0, 1], .points or .texts
    metrics = aigc.train(["model=gan", "trainer.max_steps=500"])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "train"]


# Imported on first use, so `import aigc_cli` (and `aigc --help`) stays free of torch.
def load(*args: Any, **kwargs: Any) -> Any:
    from aigc_cli.api import load as _load

    return _load(*args, **kwargs)


def train(*args: Any, **kwargs: Any) -> Any:
    # Deferred: `import aigc_cli` stays free of torch.
    from aigc_cli.api import train as _train

    return _train(*args, **kwargs)


load.__doc__ = "aigc_cli.api.load: a trained model (export folder, run dir or checkpoint)."
train.__doc__ = "aigc_cli.api.train: train from overrides, as `aigc train`; returns the metrics."
