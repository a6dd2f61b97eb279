"""Every architecture of the zoo; importing this package registers them."""
from edgeseg.models.archs import sfnet  # noqa: F401
from edgeseg.models.archs import deeplabv3plus, fcn, pspnet, segformer, unet  # noqa: F401
from edgeseg.models.archs import mask2former, maskformer, segmenter, setr  # noqa: F401
from edgeseg.models.archs import alignseg, deeplab, espnet, segnet, u2net, unetpp  # noqa: F401
