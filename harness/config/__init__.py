"""Config stage: Hydra groups in conf/ -> one typed, validated RunConfig (the only input of every stage).

    from harness import config
    cfg = config.compose(["method=qlora", "train.max_steps=20"])   # ConfigError lists every problem, each with its fix

schema.py (dataclasses, ConfigError) <- checks.py (structure, types, "Did you mean") <- rules.py (cross-field
rules), search.py (conf/ plus the user's config folders: HARNESS_CONFIG_PATH, --config-dir), identity.py (a
model or data set given by path is named after it) <- compose.py (Hydra compose, run configs on disk). This
package imports nothing heavy: `harness validate` runs without torch.
"""

from harness.config.checks import check_structure, to_dict
from harness.config.compose import (
    check_key,
    compose,
    compose_tree,
    default_run_name,
    from_dict,
    group_options,
    load_run_config,
)
from harness.config.rules import target_modules, validate
from harness.config.schema import (
    ALLOWED,
    GROUPS,
    ConfigError,
    DataConfig,
    DuringTraining,
    EvalConfig,
    GenerationSuite,
    LmEvalConfig,
    MethodConfig,
    ModelConfig,
    PerplexitySuite,
    RunConfig,
    TinySpec,
    TrackerConfig,
    TrainConfig,
)

__all__ = [
    "ALLOWED", "GROUPS", "ConfigError", "check_key", "DataConfig", "DuringTraining", "EvalConfig", "GenerationSuite", "LmEvalConfig", "MethodConfig",
    "ModelConfig", "PerplexitySuite", "RunConfig", "TinySpec", "TrackerConfig", "TrainConfig", "check_structure",
    "compose", "compose_tree", "default_run_name", "from_dict", "group_options", "load_run_config", "target_modules",
    "to_dict", "validate",
]
