"""Search spaces as files: experiment key (dotted) -> distribution, validated against the schema.

    ppo.lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
    ppo.gamma: {type: loguniform, low: 0.95, high: 0.999, complement: true}  # 1 - gamma on a log scale
    ppo.num_epochs: {type: int, low: 2, high: 10}
    ppo.train_batch_size: {type: choice, values: [512, 1024, 2048, 4096]}

Each parameter becomes one Optuna `suggest_*` call (define-by-run); the trial's config holds the value
actually used (gamma, never 1 - gamma).
"""

from __future__ import annotations

import itertools
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from rlsweep.config import PERTURBABLE, ConfigError, ExperimentConfig, read_yaml, validate
from rlsweep.envs import space_info

NESTING = "/"  # Tune unflattens suggested configs on "/"


PERTURBATION_FACTORS = (0.8, 1.2)  # PBT's explore step: a value times one of these (Tune's default)


def _factor(rng: Any) -> float:
    return PERTURBATION_FACTORS[int(rng.integers(len(PERTURBATION_FACTORS)))]


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def sample(self, rng: Any) -> Any:
        """A value drawn from the distribution with a numpy Generator (PBT's initial population)."""
        raise NotImplementedError

    def _shift(self, value: Any, rng: Any) -> Any:
        raise NotImplementedError

    def perturb(self, value: Any, rng: Any, resample_probability: float) -> Any:
        """PBT's explore step: with `resample_probability` a fresh draw, else `value` moved a little (times
        0.8 or 1.2, or a neighbouring choice), kept within the distribution's bounds."""
        if rng.random() < resample_probability:
            return self.sample(rng)
        return self._shift(value, rng)


class _Range(_Dist):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def extremes(self) -> list[Any]:
        """The bounds: the values whose combinations `load_search_space` checks."""
        return [self.low, self.high]

    def _clamp(self, x: float) -> float:
        return min(max(x, self.low), self.high)


class Uniform(_Range):
    """Uniform on [low, high]."""

    type: Literal["uniform"]

    def suggest(self, trial: Any, name: str) -> float:
        """Draws the value of parameter `name` from an Optuna trial."""
        return trial.suggest_float(name, self.low, self.high)

    def sample(self, rng: Any) -> float:
        return float(rng.uniform(self.low, self.high))

    def _shift(self, value: float, rng: Any) -> float:
        return self._clamp(value * _factor(rng))


class LogUniform(_Range):
    """Log-uniform on [low, high]; with `complement`, 1 - x is what is log-uniform."""

    type: Literal["loguniform"]
    complement: bool = False

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        lo = 1 - self.high if self.complement else self.low
        if lo <= 0:
            what = "1 - high" if self.complement else "low"
            raise ValueError(f"a log scale needs positive bounds ({what} = {lo:g})")
        return self

    def suggest(self, trial: Any, name: str) -> float:
        """Draws the value of parameter `name` from an Optuna trial.

        With `complement`, Optuna's parameter is named `1-<name>` and holds 1 - x.
        """
        if self.complement:
            return 1.0 - trial.suggest_float(f"1-{name}", 1 - self.high, 1 - self.low, log=True)
        return trial.suggest_float(name, self.low, self.high, log=True)

    def sample(self, rng: Any) -> float:
        if self.complement:
            return 1.0 - math.exp(float(rng.uniform(math.log(1 - self.high), math.log(1 - self.low))))
        return math.exp(float(rng.uniform(math.log(self.low), math.log(self.high))))

    def _shift(self, value: float, rng: Any) -> float:
        factor = _factor(rng)  # with complement, on 1 - x: gamma 0.99 -> 0.988 or 0.992
        return self._clamp(1.0 - (1.0 - value) * factor if self.complement else value * factor)


class Int(_Dist):
    """Integers low, low + step, ... up to high (inclusive when on that grid); `log` draws on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> Int:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("log: true needs low > 0 and step 1")
        return self

    def suggest(self, trial: Any, name: str) -> int:
        """Draws the value of parameter `name` from an Optuna trial."""
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def sample(self, rng: Any) -> int:
        if self.log:
            return min(self.high, math.floor(math.exp(float(rng.uniform(math.log(self.low), math.log(self.high + 1))))))
        return int(rng.choice(self.values()))

    def _shift(self, value: int, rng: Any) -> int:
        factor = _factor(rng)
        lo, hi = self.extremes()
        moved = self.low + round((value * factor - self.low) / self.step) * self.step
        if moved == value:  # a small integer times 0.8 or 1.2 rounds back to itself: one step instead
            moved = value + (self.step if factor > 1 else -self.step)
        return int(min(max(moved, lo), hi))

    def extremes(self) -> list[Any]:
        """The lowest and the highest value it can take (`high` itself may be off the step grid)."""
        return [self.low, self.high - (self.high - self.low) % self.step]

    def values(self) -> list[int]:
        """Every value it can take (what load_search_space checks one by one)."""
        if self.log:
            return list(range(self.low, self.high + 1))
        return list(range(self.low, self.high + 1, self.step))


class Choice(_Dist):
    """One of `values`, any YAML values (lists too, e.g. `policy.hidden_sizes`)."""

    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def suggest(self, trial: Any, name: str) -> Any:
        """Draws one of `values` from an Optuna trial.

        Where a value is not a scalar, the study records the index of the one drawn instead.
        """
        # Optuna stores choices of plain scalars only; lists (e.g. layer sizes) go by index.
        if all(isinstance(v, (bool, int, float, str)) or v is None for v in self.values):
            return trial.suggest_categorical(name, self.values)
        return self.values[trial.suggest_categorical(name, list(range(len(self.values))))]

    def extremes(self) -> list[Any]:
        """Every value: a choice has no order, so each is checked against the other parameters' extremes."""
        return list(self.values)

    def sample(self, rng: Any) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def _shift(self, value: Any, rng: Any) -> Any:
        """A neighbour in the list (as Tune's PBT does), or a fresh draw for a value not in it."""
        if value not in self.values:
            return self.sample(rng)
        i = self.values.index(value) + (1 if rng.random() < 0.5 else -1)
        return self.values[min(max(i, 0), len(self.values) - 1)]


Distribution = Annotated[Uniform | LogUniform | Int | Choice, Field(discriminator="type")]
_DIST = TypeAdapter(Distribution)
_MAX_COMBINATIONS = 4096


def tunable_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every leaf key of the experiment schema that a search space may name."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += tunable_keys(ann, f"{prefix}{name}.")
        elif f"{prefix}{name}" not in ("name", "results_dir", "env.id", "schedules"):
            keys.append(f"{prefix}{name}")
    return keys


class SearchSpace:
    """Parameters in file order; `suggest` is the define-by-run function Optuna calls, `check` tells
    whether a suggestion makes a valid experiment of the base one."""

    def __init__(self, params: dict[str, Any], source: str, base: dict[str, Any] | None = None):
        self.params = params
        self.source = source
        self.base = base

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The define-by-run function: one value per parameter, for the trial's config.

        Keys are the dotted names with "/" for "." (Tune nests the config on it).
        """
        return {name.replace(".", NESTING): dist.suggest(trial, name) for name, dist in self.params.items()}

    def draw(self, rng: Any) -> dict[str, Any]:
        """A valid suggestion (nested, as `suggest`'s) drawn at random with a numpy Generator: PBT's
        initial population."""
        return self._valid(lambda: {name: dist.sample(rng) for name, dist in self.params.items()})

    def explore(self, values: dict[str, Any], rng: Any, resample_probability: float) -> dict[str, Any]:
        """PBT's explore step from `values` (dotted key -> value): each perturbed (`_Dist.perturb`), as a
        valid suggestion (nested); `values` themselves where 50 tries give no valid one."""
        try:
            return self._valid(lambda: {name: dist.perturb(values[name], rng, resample_probability)
                                        for name, dist in self.params.items()})
        except ConfigError:
            return _nest(values)

    def _valid(self, draw: Any) -> dict[str, Any]:
        problem = None
        for _ in range(50):
            suggestion = _nest(draw())
            problem = self.check(suggestion)
            if problem is None:
                return suggestion
        raise ConfigError(f"{self.source}: 50 draws in a row gave invalid experiments; narrow the search space to "
                          f"valid combinations (the last: {problem})")

    def check(self, suggestion: dict[str, Any]) -> str | None:
        """None when the base experiment with `suggestion` (nested, as Tune passes it) is valid, else
        why not, in one line."""
        data = merge(_deepcopy(self.base or {}), suggestion)
        try:
            validate(data, self.source)
        except ConfigError as e:
            return str(e)
        return None


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """{'ppo.lr': 1} -> {'ppo': {'lr': 1}}"""
    out: dict[str, Any] = {}
    for dotted, value in values.items():
        _set(out, dotted, value)
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` (nested) merged into `base`, in place; returns `base`."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def _integer_key(dotted: str) -> bool:
    """Whether the schema types this key as an integer (so that float distributions cannot feed it)."""
    model: Any = ExperimentConfig
    *parents, leaf = dotted.split(".")
    for p in parents:
        model = model.model_fields[p].annotation
    ann = model.model_fields[leaf].annotation
    types = set(typing.get_args(ann)) or {ann}
    return int in types and float not in types


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def load_search_space(path: str | Path, experiment: dict[str, Any], experiment_source: str) -> SearchSpace:
    """Read and check a search space against an experiment (as a validated config dict).

    Every named key must exist in the schema, every distribution must be well formed, and every
    combination of the distributions' extremes must give a valid experiment.
    """
    raw = read_yaml(path)
    valid = tunable_keys()
    params: dict[str, Any] = {}
    for name, spec in raw.items():
        if name not in valid:
            raise ConfigError(f"{path}: unknown parameter '{name}' (tunable keys: {', '.join(valid)})")
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: parameter '{name}': expected a mapping like {{type: uniform, low: 0, high: 1}}")
        try:
            params[name] = _DIST.validate_python(spec)
        except ValidationError as e:
            raise ConfigError(f"{path}: parameter '{name}': {_explain_dist(e)}") from None
        if isinstance(params[name], _Range) and _integer_key(name):
            raise ConfigError(f"{path}: parameter '{name}': {spec['type']} draws fractional numbers but {name} is an "
                              f"integer: use {{type: int, low: ..., high: ...}} or a choice")
    if not params:
        raise ConfigError(f"{path}: no parameters (expected 'key: {{type: ..., ...}}' entries)")
    scheduled = set(experiment.get("schedules") or {})
    for name in params:
        if name in scheduled:
            raise ConfigError(f"{path}: parameter '{name}' also has a schedule in {experiment_source} (schedules."
                              f"{name}), which would override what the sweep draws: remove one of the two")
        if (experiment.get("sweep") or {}).get("scheduler") == "pbt" and name not in PERTURBABLE:
            raise ConfigError(f"{path}: parameter '{name}' cannot change while a policy trains, so PBT cannot "
                              f"perturb it (sweep.scheduler pbt): fix it in the experiment, or search it with "
                              f"sweep.scheduler fifo or asha (PBT can perturb: {', '.join(PERTURBABLE)})")

    names = list(params)
    # every combination of the extremes, then every value of each integer range on its own (the
    # experiment's other keys as they are): a range can hold invalid values between valid ends
    checks = list(itertools.islice(itertools.product(*(params[n].extremes() for n in names)), _MAX_COMBINATIONS))
    for i, n in enumerate(names):
        if isinstance(params[n], Int):
            checks += [tuple(v if j == i else None for j in range(len(names))) for v in params[n].values()[:4096]]
    built: set[str] = set()  # env settings built once each
    for combo in checks:
        data = _deepcopy(experiment)
        for n, v in zip(names, combo, strict=True):
            if v is not None:
                _set(data, n, v)
        setting = ", ".join(f"{n}={v!r}" for n, v in zip(names, combo, strict=True) if v is not None)
        try:
            cfg = validate(data, experiment_source)
        except ConfigError as e:
            raise ConfigError(f"{path}: the space allows an invalid experiment ({setting}): {e}") from None
        env_key = repr(sorted(cfg.env.model_dump(mode="json").items()))
        if any(n.startswith("env.") for n in names) and env_key not in built:
            # an env setting is only known to work once the env is built with it (its kwargs, say): a
            # trial that could never start would otherwise fail inside Ray, and be retried
            built.add(env_key)
            try:
                space_info(cfg.env)
            except ConfigError as e:
                raise ConfigError(f"{path}: the space allows an env that cannot be built ({setting}): {e}") from None
    return SearchSpace(params, str(path), experiment)


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def _explain_dist(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"][1:])  # drop the union tag
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            msg = f"unknown type {err['input'].get('type')!r} (expected uniform, loguniform, int or choice)"
            loc = "type"
        elif err["type"] == "union_tag_not_found":
            msg = "missing 'type' (uniform, loguniform, int or choice)"
            loc = ""
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
