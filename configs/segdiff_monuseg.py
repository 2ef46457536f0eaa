r"""SegDiff on MoNuSeg nuclei (binary), at the hyperparameters of the SegDiff paper's code.

Command (``DATA`` = the folder described under Data):

  python -m diffseg_jax.main --config=configs/segdiff_monuseg.py --workdir=runs/segdiff_monuseg \
      --config.data.manual_dir=$DATA
  python -m diffseg_jax.main --config=configs/segdiff_monuseg.py --workdir=runs/segdiff_monuseg \
      --config.data.manual_dir=$DATA --mode=segment   # or --mode=evaluate

``--config=configs/segdiff_monuseg.py:supervised`` trains the supervised baseline with the
same network and budget.

Hardware: one GPU/TPU host. The reference trained on 4 GPUs with 2 images each (global batch
8); here the global batch is split over the host's devices (1, 2, 4 or 8). Model: about 164M
parameters (a 155M U-Net and a 12-RRDB image encoder) at 256x256 in bfloat16. Segmenting
one test image samples 9 masks of each of its four 256x256 windows over all 100 steps.

Data: the MoNuSeg 2018 challenge (https://monuseg.grand-challenge.org): 30 training and 14
test H&E images of 1000x1000 with XML nucleus outlines. Draw the outlines into binary masks
(the reference does it with the MATLAB script its README links; any polygon rasteriser does)
and arrange them for the ``image_mask_folder`` builder
(diffseg_jax/data/builders/image_mask_folder.py)::

  $DATA/classes.txt             two lines: "0 background" and "255 nucleus"
  $DATA/train/images/<name>.tif   the 30 training images
  $DATA/train/masks/<name>.png    0 background, 255 nucleus (every nucleus pixel, not ids)
  $DATA/test/images/<name>.tif    the 14 test images
  $DATA/test/masks/<name>.png

As in the reference (datasets/monu.py), images are resized to 512x512; training takes random
256x256 crops with flips, and inference segments the whole 512x512 image in its four
non-overlapping 256x256 windows (sampling_util.py), each with an ensemble of 9 DDPM-100
samples whose class probabilities are averaged.

Expected result, as the paper reports it (arXiv:2112.00390, MoNuSeg table): SegDiff reaches
Dice (F1) 81.59 and IoU 69.00 on the 14 test images, averaged per image at 512x512.
"""

import pathlib
import runpy

_COMMON = pathlib.Path(__file__).with_name("segdiff_common.py")


def get_config(method: str = "segdiff"):
  """``method``: "segdiff", or "supervised" for the baseline (``--config=...py:supervised``)."""
  # README command: --rrdb_blocks 12 --batch_size 2 on mpiexec -n 4; dropout unset (0).
  config = runpy.run_path(str(_COMMON))["reference_config"](
      method, image_size=256, rrdb_blocks=12, dropout=0.0, batch_size=8)
  config.data.eval_split = "test"
  # monu.py: Resize((512, 512)), RandomCrop(256) and left-right flips as here; it also flips
  # vertically, rotates, scales and jitters colours, which this pipeline does not.
  config.data.resize = 512
  config.data.crop = "random"
  # sampling_util.py: windows of the training size every 256 px over the 512x512 image.
  config.segment.patch_size = 256
  config.segment.patch_stride = 256
  config.segment.batch_size = 1  # 4 windows x 9 members: 36 samples of 256x256 per call
  return config
