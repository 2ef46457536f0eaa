"""What the SegDiff configs at the reference's hyperparameters share (not a config itself).

configs/segdiff_monuseg.py, segdiff_vaihingen.py and segdiff_cityscapes.py start from
:func:`reference_config`, loading this file beside them by path. Its settings are those of
the SegDiff paper's code (github.com/tomeramit/SegDiff), the same in its three training
scripts image_train_diff_{medical,vaih,city}.py, which override
improved_diffusion/script_util.py's model_and_diffusion_defaults:

* network: improved_diffusion/unet.py's UNetModel as script_util.create_model builds it with
  ``deeper_net=True`` (128 channels; multipliers (1, 1, 1, 2, 2, 4, 4) at 256 px and
  (1, 1, 2, 2, 4, 4) at 128 px; 3 res blocks per level; 4-head attention at 16x16 and 8x8;
  no scale-shift norm), the image encoder improved_diffusion/RRDB.py's RRDBNet (64 features,
  growth 32) added after the stem conv;
* diffusion: 100 steps, linear schedule, eps prediction, MSE, fixed large variance
  (``sigma_small=False``), timesteps fed unscaled (``rescale_timesteps=False``);
* optimiser (improved_diffusion/train_util.py): AdamW at lr 1e-4 (the README's commands; the
  scripts' default is 2e-5), no weight decay, no warm-up or decay, no gradient clipping, EMA
  0.9999; 300,000 steps (``run_loop(max_iter=300000)``), a checkpoint every 5,000;
* inference (improved_diffusion/sampling_util.py): the EMA weights, 9 masks per image with
  DDPM over all 100 steps, averaged and rounded.

The reference also picks, among checkpoints every 5,000 steps from step 75,000, the one whose
EMA weights score best on the split it reports; these configs train to the end instead.
"""

import ml_collections

from diffseg_jax import config as config_lib

# script_util.create_model's channel multipliers with deeper_net=True, by image size.
CHANNEL_MULT = {256: (1, 1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 2, 4, 4)}


def reference_config(method: str, *, image_size: int, rrdb_blocks: int, dropout: float,
                     batch_size: int) -> ml_collections.ConfigDict:
  """The reference's settings for binary masks of RGB ``image_size`` squares.

  Args:
    method: "segdiff", or "supervised" for the baseline with the same network.
    image_size: the training size, 256 or 128.
    rrdb_blocks: RRDBs in the image encoder (the README's ``--rrdb_blocks``).
    dropout: U-Net dropout (``--dropout``; 0 where the README's command sets none).
    batch_size: the global batch, the README's ``--batch_size`` per process times its
      ``mpiexec -n``.

  Returns:
    A config reading ``data.manual_dir`` with the ``image_mask_folder`` builder (``train``
    split, left-right flips); the dataset's config sets the rest of ``data`` and
    ``segment.batch_size``.
  """
  config = config_lib.base_config()
  config.method = method
  config.data.name = "image_mask_folder"
  config.data.manual_dir = ""  # set on the command line
  config.data.split = "train"
  config.data.channels = 3
  config.data.mask_classes = 2
  config.data.image_size = image_size
  config.data.random_flip = True

  config.model.model_channels = 128
  config.model.channel_mult = CHANNEL_MULT[image_size]
  config.model.num_res_blocks = 3
  config.model.attention_resolutions = (16, 8)
  config.model.num_heads = 4
  config.model.num_head_channels = -1
  config.model.use_scale_shift_norm = False
  config.model.dropout = dropout
  # The reference computes in float16 with float32 master weights (use_fp16=True);
  # bfloat16 compute with float32 parameters is this library's counterpart.
  config.model.dtype = "bfloat16"

  config.segdiff.rrdb_blocks = rrdb_blocks
  config.segdiff.rrdb_features = 64
  config.segdiff.rrdb_growth = 32

  config.diffusion.num_timesteps = 100
  config.diffusion.beta_schedule = "linear"
  config.diffusion.model_mean_type = "eps"
  config.diffusion.model_var_type = "fixed_large"

  config.optim.learning_rate = 1e-4
  config.optim.warmup_steps = 0
  config.optim.schedule = "constant"
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 0.0
  config.optim.ema_rates = (0.9999,)

  config.train.batch_size = batch_size
  config.train.num_steps = 300_000
  config.train.log_every = 200
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.train.num_sample_images = 4

  config.segment.sampler = "ddpm"
  config.segment.steps = 0  # all 100
  config.segment.ensemble = 9
  config.segment.clip_denoised = False  # sampling_util.py: clip_denoised=False
  config.segment.ema_index = 0
  return config
