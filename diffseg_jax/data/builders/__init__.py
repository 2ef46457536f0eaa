"""The project's TFDS builders; importing this module registers them with TFDS.

Each reads a dataset in its official distribution format from a folder the user fills by hand
(``data.manual_dir``); see each module for the layout and the split.
"""

from diffseg_jax.data.builders.camvid import CamvidSegnet
from diffseg_jax.data.builders.common import IGNORE_ID
from diffseg_jax.data.builders.image_mask_folder import ImageMaskFolder
from diffseg_jax.data.builders.isbi2012 import Isbi2012
from diffseg_jax.data.builders.label_efficient import LabelEfficientSegmentation
from diffseg_jax.data.builders.magnetic_tile import MagneticTile
from diffseg_jax.data.builders.mnist_idx import FashionMnistIdx
from diffseg_jax.data.builders.mnist_idx import MnistIdx
from diffseg_jax.data.builders.tiny_imagenet import TinyImagenet
