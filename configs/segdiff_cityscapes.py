r"""SegDiff on Cityscapes instance crops (binary: the instance vs the rest of its box), one
object class per run, at the hyperparameters of the SegDiff paper's code.

Command (``DATA`` = the folder of one class's crops, described under Data):

  python -m diffseg_jax.main --config=configs/segdiff_cityscapes.py --workdir=runs/segdiff_car \
      --config.data.manual_dir=$DATA
  python -m diffseg_jax.main --config=configs/segdiff_cityscapes.py --workdir=runs/segdiff_car \
      --config.data.manual_dir=$DATA --mode=segment   # or --mode=evaluate

``--config=configs/segdiff_cityscapes.py:supervised`` trains the supervised baseline with the
same network and budget.

Hardware: one GPU/TPU host. The reference trained on 2 GPUs with 15 crops each (global batch
30); the global batch must divide by the host's device count, so on 4 or 8 devices set
``--config.train.batch_size=32``. Model: about 163M parameters (a 152M U-Net and a 15-RRDB
image encoder) at 128x128 in bfloat16.

Data: the reference (datasets/city.py) cuts one crop per annotated instance from the
Cityscapes images (https://www.cityscapes-dataset.com, leftImg8bit) with the instance
polygons and the train/val split of PolyRNN++ (``cityscapes_final_v5``, prepared as the
SegDiff README describes), and trains one model per class (bike, bus, person, train,
motorcycle, car, rider). This project has no builder for those annotations: make the crops
yourself, for one class, into a folder for the ``image_mask_folder`` builder
(diffseg_jax/data/builders/image_mask_folder.py)::

  $DATA/classes.txt              two lines: "0 background" and "255 instance"
  $DATA/train/images/<id>.png    one crop per instance of the class in PolyRNN++'s train split
  $DATA/train/masks/<id>.png     0 background, 255 the instance (other instances: background)
  $DATA/val/images/<id>.png      the same for its val split (the split the paper reports)
  $DATA/val/masks/<id>.png

Each crop is the instance's bounding box ``[x, y, w, h]`` (clipped at 0) grown by e percent
of its size, half on each side: rows ``y - h e/200`` to ``y + h + h e/200`` and columns
``x - w e/200`` to ``x + w + w e/200``, clipped to the image and rounded; the mask is the
instance's polygons (all parts merged) drawn at the image's size and cut the same way. The
reference draws e once per training instance, uniformly from the integers 10..20, and uses
e = 15 for val (the "expansion" setting of its README command). Keep the crops at their own
size: this config resizes image and mask to 128x128 (aspect not kept) as the reference does
for training. The reference scores val masks at the crop's own size (the 128x128 prediction
upsampled); here evaluation is at 128x128.

Expected result: the paper (arXiv:2112.00390, Cityscapes table, 15% expansion) reports
SegDiff's mIoU per class and their mean on the val split.
"""

import pathlib
import runpy

_COMMON = pathlib.Path(__file__).with_name("segdiff_common.py")


def get_config(method: str = "segdiff"):
  """``method``: "segdiff", or "supervised" for the baseline (``--config=...py:supervised``)."""
  # README command: --rrdb_blocks 15 --batch_size 15 on mpiexec -n 2; dropout unset (0).
  config = runpy.run_path(str(_COMMON))["reference_config"](
      method, image_size=128, rrdb_blocks=15, dropout=0.0, batch_size=30)
  config.data.eval_split = "val"
  # city.py: each crop resized to [128, 128] (image bilinear, mask nearest); in training it
  # also rotates (22 degrees) and scales (0.75-1.25), which this pipeline does not.
  config.data.crop = "none"
  config.segment.batch_size = 16  # 144 samples of 128x128 per call
  return config
