"""The training recipes this installation knows and their parameters, checked when a job is
submitted (no torch here: the server imports this; `modelworks.recipes` runs them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelworks.errors import ValidationFailed


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int | float | list[int] | choice
    default: Any
    low: float = 0
    high: float = 0
    help: str = ""
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> Any:
        if self.kind == "choice":
            if value not in self.choices:
                raise ValidationFailed(
                    f"parameter {self.name!r} must be one of {', '.join(self.choices)}; "
                    f"got {str(value)[:40]!r}"
                )
            return value
        rng = f"from {_num(self.low)} to {_num(self.high)}"
        if self.kind == "list[int]":
            if (
                not isinstance(value, list)
                or not 1 <= len(value) <= 8
                or not all(_is_int(v) and self.low <= v <= self.high for v in value)
            ):
                raise ValidationFailed(
                    f"parameter {self.name!r} must be a list of 1 to 8 whole numbers, each {rng} "
                    f"(e.g. [64, 32])"
                )
            return [int(v) for v in value]
        if self.kind == "int":
            ok = _is_int(value) and self.low <= value <= self.high
            what = "a whole number"
        else:
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and self.low <= value <= self.high
            )
            what = "a number"
        if not ok:
            raise ValidationFailed(f"parameter {self.name!r} must be {what} {rng}; got {value!r}")
        return int(value) if self.kind == "int" else float(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str  # the task of the model it registers
    needs_target: bool
    formats: tuple[str, ...]
    params: tuple[Param, ...]
    metric: str  # the validation metric early stopping watches
    higher_is_better: bool
    needs_series: bool = False  # a time series: the dataset names its entity and time columns


COMMON_PARAMS = (
    Param("epochs", "int", 30, 1, 500, "passes over the training split"),
    Param("batch_size", "int", 64, 1, 65536, "rows per optimizer step, over all ranks"),
    Param("learning_rate", "float", 1e-3, 1e-6, 1.0, "Adam's step size"),
    Param("dropout", "float", 0.1, 0.0, 0.9, "dropout after each hidden layer"),
    Param("weight_decay", "float", 0.0, 0.0, 1.0, "Adam's L2 penalty"),
    Param("patience", "int", 5, 1, 100, "epochs without a better validation metric to stop"),
    Param("seed", "int", 0, 0, 2**31 - 1, "seeds the split, the weights and the batches"),
    Param("validation_fraction", "float", 0.1, 0.05, 0.5, "share of rows for validation"),
    Param("test_fraction", "float", 0.1, 0.05, 0.5, "share of rows for the test report"),
)
TABULAR_PARAMS = (
    *COMMON_PARAMS,
    Param("hidden", "list[int]", [64, 64], 1, 4096, "units of each hidden layer"),
    Param("max_categories", "int", 100, 2, 10000, "a text column's most frequent values kept"),
)
SEQUENCE_PARAMS = (
    *COMMON_PARAMS,
    Param("window", "int", 16, 2, 1024, "time steps per window"),
    Param("stride", "int", 1, 1, 1024, "steps between the starts of two windows"),
    Param("hidden_size", "int", 32, 4, 1024, "units of the recurrent layers"),
    Param("layers", "int", 1, 1, 4, "stacked recurrent layers"),
    Param("cell", "choice", "gru", choices=("gru", "lstm")),
)

IMAGE_PARAMS = (
    *COMMON_PARAMS,
    Param("image_size", "int", 64, 16, 256, "images are resized to this many pixels square"),
    Param("width", "int", 16, 4, 128, "channels of the first convolution (then x2, x4)"),
    Param("augment", "choice", "flip-shift", choices=("flip-shift", "none")),
)

RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "tabular-classification",
            "tabular-classification",
            True,
            ("csv", "parquet", "jsonl"),
            TABULAR_PARAMS,
            "macro_f1",
            True,
        ),
        Recipe(
            "tabular-regression",
            "tabular-regression",
            True,
            ("csv", "parquet", "jsonl"),
            TABULAR_PARAMS,
            "rmse",
            False,
        ),
        Recipe(
            "image-classification",
            "image-classification",
            False,
            ("images",),
            IMAGE_PARAMS,
            "macro_f1",
            True,
        ),
        Recipe(
            "sequence-classification",
            "sequence-classification",
            True,
            ("csv", "parquet"),
            SEQUENCE_PARAMS,
            "macro_f1",
            True,
            needs_series=True,
        ),
        Recipe(
            "sequence-regression",
            "sequence-regression",
            True,
            ("csv", "parquet"),
            SEQUENCE_PARAMS,
            "rmse",
            False,
            needs_series=True,
        ),
    )
}


def check_recipe(name: str) -> Recipe:
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ValidationFailed(
            f"unknown recipe {name[:64]!r}; this server trains {', '.join(RECIPES)}"
        )
    return recipe


def check_params(recipe: Recipe, params: dict[str, Any]) -> dict[str, Any]:
    """The recipe's parameters with defaults filled in; 422 naming what is wrong."""
    known = {p.name: p for p in recipe.params}
    unknown = sorted(k for k in params if k not in known)
    if unknown:
        raise ValidationFailed(
            f"unknown parameter {unknown[0][:64]!r} for recipe {recipe.name!r}; it takes "
            f"{', '.join(known)}"
        )
    clean = {
        name: p.check(params[name]) if name in params else p.default for name, p in known.items()
    }
    if clean["validation_fraction"] + clean["test_fraction"] >= 0.9:
        raise ValidationFailed(
            "validation_fraction + test_fraction must leave at least 10% of rows for training"
        )
    return clean
