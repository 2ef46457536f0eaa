"""A tiny model on the procedural "shapes" data, for tests of the training machinery.

  python -m diffseg_jax.main --config=tests/tiny_config.py --workdir=/tmp/tiny
"""

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
