"""alignkit: align generative models with human preferences.

The Python API mirrors the CLI::

    import alignkit
    config = alignkit.load_config("examples/dpo.yaml", ["optim.lr=1e-5"])
    result = alignkit.train(config)
    report = alignkit.evaluate({"dpo": str(result.model_dir)}, "path/to/sft", prompts, judge)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "alignkit.recipes", "TrainConfig": "alignkit.config", "train": "alignkit.recipes",
    "evaluate": "alignkit.eval.evaluate", "run_demo": "alignkit.apps.demo", "load_records": "alignkit.data.formats",
    "PreferenceRecord": "alignkit.data.records", "get_loss": "alignkit.losses", "LOSSES": "alignkit.losses",
    "build_sandbox": "alignkit.apps.sandbox_build",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:  # lazy: `import alignkit` stays fast, the CLI starts quickly
    if name not in _API:
        raise AttributeError(f"module 'alignkit' has no attribute '{name}'")
    import importlib

    module = importlib.import_module(_API[name])
    return getattr(module, "build" if name == "build_sandbox" else name)
