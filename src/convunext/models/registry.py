"""One registry for every model: ``create_model(name, **kwargs)`` and ``list_models()``.

Models register their class (or a factory) with :func:`register_model`; every registered model takes
``in_channels`` and ``num_classes`` and returns plain logits ``N x num_classes x H x W``.

A *variant* (:func:`register_variant`) is a named configuration of a registered model: ``create_model(variant)``
builds that model with the arguments the variant fixes, and the caller may set only the others (``width``,
``in_channels``, ...). Variants are not in :func:`list_models` (the architectures, which the registry-parametrised
tests, ``convunext reproduce`` and ``convunext models`` go through) but in :func:`list_variants`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = [
    "create_model",
    "list_models",
    "list_variants",
    "model_arguments",
    "register_model",
    "register_variant",
    "variant_arguments",
]

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}
_VARIANTS: dict[str, tuple[str, dict[str, object]]] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Class/function decorator that makes ``create_model(name, ...)`` build it. Names must be unique."""

    def decorator(factory: F) -> F:
        _check_new_name(name)
        _REGISTRY[name] = factory
        return factory

    return decorator


def _check_new_name(name: str) -> None:
    if name in _REGISTRY or name in _VARIANTS:
        raise ValueError(f"model name {name!r} is already registered")


def register_variant(name: str, model: str, **fixed: object) -> None:
    """Register ``name`` as registered model ``model`` with the constructor arguments ``fixed`` (which callers of
    ``create_model(name, ...)`` cannot change). Names must be unique among models and variants."""
    _check_new_name(name)
    unknown = sorted(set(fixed) - set(model_arguments(model)))
    if unknown:
        raise ValueError(f"model {model!r} takes no argument {unknown[0]!r}")
    _VARIANTS[name] = (model, dict(fixed))


def list_models() -> list[str]:
    """Names of every registered model, in registration order (the paper's model first); variants excluded."""
    return list(_REGISTRY)


def list_variants() -> list[str]:
    """Names of every registered variant (:func:`register_variant`), in registration order."""
    return list(_VARIANTS)


def variant_arguments(name: str) -> tuple[str, dict[str, object]]:
    """``(model, fixed arguments)`` of variant ``name``; ``(name, {})`` for a registered model."""
    if name in _VARIANTS:
        model, fixed = _VARIANTS[name]
        return model, dict(fixed)
    _factory(name)
    return name, {}


def _factory(name: str) -> ModelFactory:
    if name in _VARIANTS:
        return _REGISTRY[_VARIANTS[name][0]]
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)} (and the variants of "
            "`convunext models --variants`)"
        )
    return _REGISTRY[name]


def model_arguments(name: str) -> dict[str, object]:
    """The constructor arguments of model ``name`` with their defaults (``inspect.Parameter.empty`` if none); for
    a variant, those it leaves free."""
    signature = inspect.signature(_factory(name))
    fixed = variant_arguments(name)[1]
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) and p.name not in fixed
    }


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model or variant ``name`` with constructor arguments ``kwargs`` (a variant's fixed
    arguments first).

    Raises:
        ValueError: for an unknown name (the message lists the registered names), an argument the model
            does not take or accepts no such value for (the message lists the valid arguments or values), or one
            a variant fixes.
    """
    factory = _factory(name)
    base, fixed = variant_arguments(name)
    taken = sorted(set(kwargs) & set(fixed))
    if taken:
        raise ValueError(
            f"model {name!r} is {base!r} with {taken[0]}={fixed[taken[0]]!r} fixed; to choose {taken[0]}, use "
            f"model {base!r}"
        )
    valid = model_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} takes no argument {', '.join(map(repr, unknown))}; valid arguments: {', '.join(valid)}"
        )
    try:
        return factory(**fixed, **kwargs)
    except TypeError as error:  # e.g. a string where a number is needed
        raise ValueError(f"bad argument for model {name!r}: {error}") from error
