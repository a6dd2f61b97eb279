"""The model zoo: `create(arch, num_classes, **options)`, `available()`."""
from edgeseg.models.base import SegModel
from edgeseg.models.registry import available, create, register

__all__ = ["SegModel", "available", "create", "register"]
