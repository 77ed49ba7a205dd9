"""Typed configuration, validated in one place: the sections (`schema.py`) and reading a YAML file plus dotted
overrides into them (`loading.py`)."""

from eidos.config.loading import STARTED_FROM, default_config_path, load_config
from eidos.config.schema import (
    PATH_PREFIXES,
    CacheData,
    Config,
    DataConfig,
    EncodersConfig,
    ModelConfig,
    ObjectiveConfig,
    OpenMojiData,
    SamplingConfig,
    ShardData,
    StageConfig,
    TimeDistribution,
    TrainConfig,
    check_model_reference,
)

__all__ = [
    "PATH_PREFIXES", "STARTED_FROM", "CacheData", "Config", "DataConfig", "EncodersConfig", "ModelConfig",
    "ObjectiveConfig", "OpenMojiData", "SamplingConfig", "ShardData", "StageConfig", "TimeDistribution",
    "TrainConfig", "check_model_reference", "default_config_path", "load_config",
]
