"""Typed configuration: `params.yaml` loaded into frozen, validated models.

Every tunable of the loop lives in one `params.yaml`. It is parsed once into the
models below and passed explicitly; a typo or a wrong type in the file fails at
load time with the path of the bad key, not deep inside a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Dataset splits, in order. `production` is a source pool, never a dataset split."""

SOURCE_POOLS: tuple[str, ...] = (*SPLITS, "production")


class ConfigError(ValueError):
    """`params.yaml` is missing, unreadable or does not match the schema."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Strata(_Frozen):
    """The slices the service must cover; a stratum is one value of each."""

    style: tuple[str, ...] = ("handwritten", "printed")
    noise: tuple[str, ...] = ("clean", "shadow", "rotated", "blur")

    @field_validator("style", "noise")
    @classmethod
    def _non_empty_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values or len(set(values)) != len(values):
            raise ValueError("must be a non-empty list of distinct names")
        return values

    def names(self) -> list[str]:
        """Stratum names, `style/noise`, in plan order.

        >>> Strata(style=("a",), noise=("x", "y")).names()
        ['a/x', 'a/y']
        """
        return [f"{s}/{n}" for s in self.style for n in self.noise]


class NoiseStrength(_Frozen):
    """Strength of each noise at severity 1.0."""

    shadow_min_light: float = Field(0.35, gt=0, lt=1)
    rotate_degrees: tuple[float, float] = (8.0, 25.0)
    blur_radius: tuple[float, float] = (0.8, 1.4)


class DataPlan(_Frozen):
    """The dataset specification derived from the service requirements."""

    root: Path = Path("data")
    name: str = "digits"
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))
    strata: Strata = Strata()
    per_stratum: dict[Literal["train", "val", "test"], int] = Field(
        default_factory=lambda: {"train": 200, "val": 40, "test": 60}
    )
    source_shares: dict[Literal["train", "val", "test", "production"], float] = Field(
        default_factory=lambda: {"train": 0.6, "val": 0.15, "test": 0.15, "production": 0.1}
    )
    noise: NoiseStrength = NoiseStrength()

    @field_validator("per_stratum")
    @classmethod
    def _every_split(cls, counts: dict[str, int]) -> dict[str, int]:
        missing = set(SPLITS) - set(counts)
        if missing:
            raise ValueError(f"needs a count for every split; missing {sorted(missing)}")
        if any(c < 0 for c in counts.values()):
            raise ValueError("counts must be >= 0")
        return counts

    @field_validator("source_shares")
    @classmethod
    def _shares_sum_to_one(cls, shares: dict[str, float]) -> dict[str, float]:
        if set(shares) != set(SOURCE_POOLS):
            raise ValueError(f"needs exactly the pools {list(SOURCE_POOLS)}")
        if any(v <= 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
            raise ValueError("shares must be positive and sum to 1")
        return shares

    @property
    def dataset_dir(self) -> Path:
        """`data/<name>`: the dataset folder inside the DVC-tracked root."""
        return self.root / self.name


class Scenario(_Frozen):
    """A traffic mix for the collector's batches: weights per stratum, noise severity."""

    mix: Literal["plan"] | dict[str, float] = "plan"
    severity: dict[str, float] = Field(default_factory=dict)


class ValidationConfig(_Frozen):
    """Thresholds of the data gate."""

    class_balance_tolerance: float = Field(0.25, ge=0, le=1)
    failed_rows_shown: int = Field(5, ge=0)


class Params(_Frozen):
    """Everything in `params.yaml`."""

    model_config = ConfigDict(extra="allow", frozen=True)  # later stages add sections

    data: DataPlan = DataPlan()
    scenarios: dict[str, Scenario] = Field(default_factory=lambda: {"in_distribution": Scenario()})
    validation: ValidationConfig = ValidationConfig()

    @model_validator(mode="after")
    def _scenarios_name_strata(self) -> Params:
        known = set(self.data.strata.names())
        for name, scenario in self.scenarios.items():
            if isinstance(scenario.mix, dict):
                unknown = set(scenario.mix) - known
                if unknown:
                    raise ValueError(
                        f"scenario {name!r} names unknown strata {sorted(unknown)}; "
                        f"known: {sorted(known)}"
                    )
            bad = set(scenario.severity) - set(self.data.strata.noise)
            if bad:
                raise ValueError(f"scenario {name!r}: severity for unknown noise {sorted(bad)}")
        return self

    def scenario(self, name: str) -> Scenario:
        """The named scenario, or a clear error listing the known ones."""
        try:
            return self.scenarios[name]
        except KeyError:
            raise ConfigError(
                f"unknown scenario {name!r}; params.yaml defines {sorted(self.scenarios)}"
            ) from None


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read `params.yaml` into `Params`.

    Args:
        path: the YAML file.
        overrides: dotted keys to replace, e.g. `{"data.seed": 7}` (the CLI's `--set`).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not match the schema.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root or pass --params)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {err}") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating mappings on the way.

    >>> t = {"a": {"b": 1}}; _set_dotted(t, "a.c", 2); t
    {'a': {'b': 1, 'c': 2}}
    """
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a mapping")
        node = child
    node[leaf] = value
