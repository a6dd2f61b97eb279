"""Every architecture of the zoo; importing this package registers them."""
from edgeseg.models.archs import (  # noqa: F401  # noqa: F401  # noqa: F401
    alignseg,
    deeplab,
    deeplabv3plus,
    espnet,
    fcn,
    mask2former,
    maskformer,
    pspnet,
    segformer,
    segmenter,
    segnet,
    setr,
    sfnet,  # noqa: F401
    u2net,
    unet,
    unetpp,
)
