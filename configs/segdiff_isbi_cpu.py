r"""SegDiff on ISBI 2012 neuronal membranes (binary), sized for a 2-core CPU.

Command (``DATA`` = the folder holding ``data/membrane/train/{image,label}``, the PNG export of
the challenge's 30 labelled slices; see diffseg_jax/data/builders/isbi2012.py):

  python -m diffseg_jax.main --config=configs/segdiff_isbi_cpu.py --workdir=/tmp/segdiff_isbi \
      --config.data.manual_dir=$DATA
  python -m diffseg_jax.main --config=configs/segdiff_isbi_cpu.py --workdir=/tmp/segdiff_isbi \
      --config.data.manual_dir=$DATA --mode=segment   # or --mode=evaluate

Hardware: 2 CPU cores. Data: slices 0-19 train, 20-29 test (the builder's split), the 512x512
slices resized to 128x128 (membranes 1-2 px wide); training on random 64x64 crops with flips;
evaluation on the centre 64x64 of each test slice (``segment.whole_images=False``: a DDPM-100
ensemble of 9 costs 900 network passes per image on 2 cores); whole slices with
``--config.segment.whole_images=True --config.segment.patch_size=64`` (overlapping windows).
``--config=configs/segdiff_isbi_cpu.py:supervised`` trains the baseline with the same network
and budget.

Expected result: see experiments/segdiff/README.md (1,000 steps of batch 8, about 15
minutes).
"""

from diffseg_jax import config as config_lib


def get_config(method: str = "segdiff"):
  """``method``: "segdiff", or "supervised" for the baseline (``--config=...py:supervised``)."""
  config = config_lib.base_config()
  config.method = method
  config.data.name = "isbi2012"
  config.data.manual_dir = ""  # set on the command line (see the docstring)
  config.data.split = "train"
  config.data.eval_split = "test"
  config.data.channels = 1
  config.data.mask_classes = 2
  config.data.resize = 128
  config.data.crop = "random"
  config.data.image_size = 64
  config.data.random_flip = True
  config.data.prefetch = 0

  config.model.model_channels = 32
  config.model.channel_mult = (1, 1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (16, 8)
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
  config.optim.decay_steps = 2000  # the first half of a 2,000-step cosine (CPU budget)
  config.optim.ema_rates = (0.995,)  # a 200-step horizon

  config.train.batch_size = 8
  config.train.num_steps = 1000
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.num_sample_images = 2

  config.segment.sampler = "ddpm"
  config.segment.steps = 0
  config.segment.ensemble = 9
  config.segment.batch_size = 2
  config.segment.whole_images = False  # the centre 64x64 of each 128x128 test slice
  return config
