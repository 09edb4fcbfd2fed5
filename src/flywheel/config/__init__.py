"""Typed configuration: `params.yaml` loaded into frozen, validated models.

Every tunable of the loop lives in one `params.yaml`. It is parsed once into the
models below and passed explicitly; a typo or a wrong type in the file fails at
load time with the path of the bad key, not deep inside a stage.

The sections live by stage: `data` (the dataset plan, splits, scenarios, the
data gate), `training` (network, augmentation, training, the search),
`evaluation` (the gates), `serving` (the service and its prediction log),
`loop` (monitor, curate, label, merge, simulate, ui); `params` holds `Params`
and reads the file; `base` what every section shares.
"""

from flywheel.config.base import ConfigError, nfc
from flywheel.config.cluster import ClusterConfig, Placement, Resources, Toleration, TrainPlacement
from flywheel.config.data import (
    HOLDOUT_SPLIT,
    MANIFEST_SPLITS,
    PRODUCTION_SOURCE,
    PRODUCTION_STRATUM,
    SOURCE_POOLS,
    SPLITS,
    DataPlan,
    NoiseStrength,
    Scenario,
    SourcePool,
    Split,
    Strata,
    ValidationConfig,
)
from flywheel.config.evaluation import EvaluateConfig, GatesConfig
from flywheel.config.loop import (
    CommitteeConfig,
    CostConfig,
    CurateConfig,
    CurationStrategy,
    DriftSignal,
    DriftTest,
    LabelConfig,
    LabelStudioConfig,
    MergeConfig,
    MonitorConfig,
    SimulateConfig,
    SyncConfig,
    TriggerConfig,
    UIConfig,
)
from flywheel.config.pages import DEFAULT_VOCABULARY, PageNoise, PagePlan, PageStrata
from flywheel.config.params import (
    NeededParams,
    Params,
    load_needed_params,
    load_params,
    parse_params,
)
from flywheel.config.serving import PredictionLogConfig, ServeConfig
from flywheel.config.state import StateConfig
from flywheel.config.training import (
    AugmentConfig,
    CategoricalDimension,
    FloatDimension,
    IntDimension,
    ModelConfig,
    PrunerConfig,
    SearchDimension,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "DEFAULT_VOCABULARY",
    "HOLDOUT_SPLIT",
    "MANIFEST_SPLITS",
    "PRODUCTION_SOURCE",
    "PRODUCTION_STRATUM",
    "SOURCE_POOLS",
    "SPLITS",
    "AugmentConfig",
    "CategoricalDimension",
    "ClusterConfig",
    "CommitteeConfig",
    "ConfigError",
    "CostConfig",
    "CurateConfig",
    "CurationStrategy",
    "DataPlan",
    "DriftSignal",
    "DriftTest",
    "EvaluateConfig",
    "FloatDimension",
    "GatesConfig",
    "IntDimension",
    "LabelConfig",
    "LabelStudioConfig",
    "MergeConfig",
    "ModelConfig",
    "MonitorConfig",
    "NeededParams",
    "NoiseStrength",
    "PageNoise",
    "PagePlan",
    "PageStrata",
    "Params",
    "Placement",
    "PredictionLogConfig",
    "PrunerConfig",
    "Resources",
    "Scenario",
    "SearchDimension",
    "ServeConfig",
    "SimulateConfig",
    "SourcePool",
    "Split",
    "StateConfig",
    "Strata",
    "SyncConfig",
    "Toleration",
    "TrainConfig",
    "TrainPlacement",
    "TriggerConfig",
    "TuneConfig",
    "UIConfig",
    "ValidationConfig",
    "load_needed_params",
    "load_params",
    "nfc",
    "parse_params",
]
