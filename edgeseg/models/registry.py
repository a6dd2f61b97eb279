"""The model zoo registry: architecture name -> builder."""
from __future__ import annotations

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


def create(arch: str, num_classes: int, **kwargs):
    _load_all()
    if arch not in _REGISTRY:
        raise EdgesegError(f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[arch](num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise EdgesegError(f"{arch}: bad model option ({e})") from None


def _load_all() -> None:
    # Importing the architecture modules registers them.
    from edgeseg.models import archs  # noqa: F401
