r"""SegDiff on Vaihingen buildings (binary), at the hyperparameters of the SegDiff paper's code.

Command (``DATA`` = the folder described under Data):

  python -m diffseg_jax.main --config=configs/segdiff_vaihingen.py --workdir=runs/segdiff_vaih \
      --config.data.manual_dir=$DATA
  python -m diffseg_jax.main --config=configs/segdiff_vaihingen.py --workdir=runs/segdiff_vaih \
      --config.data.manual_dir=$DATA --mode=segment   # or --mode=evaluate

``--config=configs/segdiff_vaihingen.py:supervised`` trains the supervised baseline with the
same network and budget.

Hardware: one GPU/TPU host. The reference trained on 2 GPUs with 4 images each (global batch
8); here the global batch is split over the host's devices (1, 2, 4 or 8). Model: about 160M
parameters (a 155M U-Net and a 6-RRDB image encoder) at 256x256 in bfloat16.

Data: the Vaihingen building crops of the DSAC benchmark (Marcos et al. 2018), the "buildings"
folder the SegDiff README links (building_NNN.tif images, building_mask_NNN.tif masks, 168 of
each). Split them as the reference's datasets/preprocess_vaihingen.py does, by sorted file
name: the first 100 train, the other 68 test. Arrange them for the ``image_mask_folder``
builder (diffseg_jax/data/builders/image_mask_folder.py), each mask under its image's name::

  $DATA/classes.txt                     two lines: "0 background" and "255 building"
  $DATA/train/images/building_NNN.tif   the first 100
  $DATA/train/masks/building_NNN.png    from building_mask_NNN.tif: 0 background, 255 building
  $DATA/test/images/building_NNN.tif    the other 68
  $DATA/test/masks/building_NNN.png

Binarise the masks as preprocess_vaihingen.py does (every non-zero pixel is building). Images
and masks are resized to 256x256 for training and evaluation, as that preprocessing does.

Expected result, as the paper reports it (arXiv:2112.00390, Vaihingen table): SegDiff reaches
F1 (Dice) 95.14 and mIoU 91.12 on the 68 test buildings, averaged per image at 256x256.
"""

import pathlib
import runpy

_COMMON = pathlib.Path(__file__).with_name("segdiff_common.py")


def get_config(method: str = "segdiff"):
  """``method``: "segdiff", or "supervised" for the baseline (``--config=...py:supervised``)."""
  # README command: --rrdb_blocks 6 --dropout 0.1 --batch_size 4 on mpiexec -n 2.
  config = runpy.run_path(str(_COMMON))["reference_config"](
      method, image_size=256, rrdb_blocks=6, dropout=0.1, batch_size=8)
  config.data.eval_split = "test"
  # The whole tile resized to 256x256 (preprocess_vaihingen.py: cv2.resize to (256, 256),
  # image nearest, mask bilinear then thresholded; here image area-averaged, mask nearest).
  # vaih.py also flips vertically, rotates, scales and jitters colours in training.
  config.data.crop = "none"
  config.segment.batch_size = 4  # 36 samples of 256x256 per call
  return config
