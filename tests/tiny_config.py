"""A tiny model on the procedural "shapes" data, for tests of the training machinery.

  python -m diffseg_jax.main --config=tests/tiny_config.py --workdir=/tmp/tiny
"""

import jax

from diffseg_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = "shapes"
  config.data.image_size = 8
  config.data.channels = 1
  config.model.model_channels = 32
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (4,)
  config.model.num_heads = 2
  config.diffusion.num_timesteps = 100
  config.optim.learning_rate = 1e-3
  config.optim.ema_rates = (0.9, 0.99)
  config.train.batch_size = 8
  config.train.num_steps = 20
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  config.train.num_sample_images = 8
  config.sample.steps = 4
  config.sample.num_images = 8
  config.sample.batch_size = 8
  return config


def get_segmentation_config(method: str = "segdiff", mask_classes: int = 2,
                            mask_encoding: str = "auto"):
  """A tiny SegDiff (or supervised) model on 16x16 single-channel images, for tests that
  build models and batches directly (no data is read)."""
  config = config_lib.base_config()
  config.method = method
  config.data.name = "shapes"
  config.data.image_size = 16
  config.data.channels = 1
  config.data.mask_classes = mask_classes
  config.model.model_channels = 32
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = ()
  config.segdiff.rrdb_blocks = 1
  config.segdiff.rrdb_features = 16
  config.segdiff.rrdb_growth = 8
  config.segdiff.mask_encoding = mask_encoding
  config.diffusion.num_timesteps = 50
  config.segment.sampler = "ddim"
  config.segment.steps = 10
  config.segment.ensemble = 3
  return config


def init_params(model, seed: int = 0):
  """``model.init`` run op by op with an RBG key: compiling a jitted init with threefry keys
  takes ~30 s of CPU for the tiny U-Net, while the eager ops compile once for every model of
  a test session."""
  return model.init(jax.random.key(seed, impl="rbg"))
