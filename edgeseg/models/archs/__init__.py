"""Every architecture of the zoo; importing this package registers them."""
from edgeseg.models.archs import sfnet  # noqa: F401
