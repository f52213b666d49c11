"""One registry for every model: ``create_model(name, **kwargs)`` and ``list_models()``.

Models register their class (or a factory) with :func:`register_model`; every registered model takes
``in_channels`` and ``num_classes`` and returns plain logits ``N x num_classes x H x W``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["create_model", "list_models", "model_arguments", "register_model"]

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Class/function decorator that makes ``create_model(name, ...)`` build it. Names must be unique."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, in registration order (the paper's model first)."""
    return list(_REGISTRY)


def _factory(name: str) -> ModelFactory:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def model_arguments(name: str) -> dict[str, object]:
    """The constructor arguments of model ``name`` with their defaults (``inspect.Parameter.empty`` if none)."""
    signature = inspect.signature(_factory(name))
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with constructor arguments ``kwargs``.

    Raises:
        ValueError: for an unknown name (the message lists the registered names) or an argument the model
            does not take or accepts no such value for (the message lists the valid arguments or values).
    """
    factory = _factory(name)
    valid = model_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} takes no argument {', '.join(map(repr, unknown))}; valid arguments: {', '.join(valid)}"
        )
    try:
        return factory(**kwargs)
    except TypeError as error:  # e.g. a string where a number is needed
        raise ValueError(f"bad argument for model {name!r}: {error}") from error
