"""The model zoo registry: architecture name -> builder."""
from __future__ import annotations

import json
from typing import Callable

from edgeseg.errors import EdgesegError

_REGISTRY: dict[str, Callable] = {}


def register(name: str):
    def deco(cls):
        _REGISTRY[name] = cls
        cls.arch = name
        return cls
    return deco


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_class(arch: str):
    _load_all()
    if arch not in _REGISTRY:
        raise EdgesegError(f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[arch]


def create(arch: str, num_classes: int, **kwargs):
    cls = model_class(arch)
    try:
        return cls(num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise EdgesegError(f"{arch}: bad model option ({e})") from None


def parse_options(items: list[str]) -> dict:
    """`--opt KEY=VALUE` items as {key: value}; a value that reads as JSON (numbers, lists, true) is that value."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _load_all() -> None:
    # Importing the architecture modules registers them.
    from edgeseg.models import archs  # noqa: F401
