r"""Quickstart: an unconditional DDPM on Fashion-MNIST that trains in minutes on a laptop CPU.

Command (after `apt-get install dataset-fashion-mnist` and `pip install -e .`):

  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/diffseg_quickstart

Hardware: 2 CPU cores, no accelerator. Data: the Fashion-MNIST IDX files Debian's package
`dataset-fashion-mnist` installs (no download at run time; point data.manual_dir elsewhere for a
copy of your own). The first run turns them into a TFDS dataset (`fashion_mnist_idx`, in
~/tensorflow_datasets or data.tfds_data_dir) in about half a minute; later runs reuse it.

Expected result: a 1.2M-parameter ADM U-Net at 28x28 trains 1200 steps of batch 32 (the
train step runs at 75-95 images/s on 2 idle cores: about 8 minutes with compilation and the
sample grids); the eps-MSE falls from about 1.0 to 0.41 at step 100 and 0.045-0.047 from
step 1000 on. `<workdir>/samples/step_0001200.png` is a grid of 64 DDIM-50 samples from the
EMA weights: about three quarters are recognisable garments (tops, shirts, trousers, dresses,
sandals, bags), the rest noisy textures. The grids at steps 400 and 800 are mostly noise:
the EMA (0.995) still carries the early weights there; the raw weights already give garments
at step 400 (`--mode=sample --config.sample.ema_index=-1`).
`--mode=sample` then writes 64 images to
`<workdir>/samples/step0001200_ddim50_eta0.0_ema0/samples_64x28x28x1.{png,npz}`.
"""

from diffseg_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = "fashion_mnist_idx"
  config.data.image_size = 28
  config.data.channels = 1
  # On a CPU the prefetch thread competes with the step for the same cores (40 steps of
  # batch 32 on 2 loaded cores: 39.7 img/s without, 37.2 with); accelerators gain from it.
  config.data.prefetch = 0

  config.model.model_channels = 32
  config.model.channel_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (7,)
  config.model.num_heads = 4

  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_schedule = "linear"

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.optim.ema_rates = (0.995,)

  config.train.batch_size = 32
  config.train.num_steps = 1200
  config.train.log_every = 100
  config.train.checkpoint_every = 400
  config.train.sample_every = 400
  config.train.num_sample_images = 64

  config.sample.sampler = "ddim"
  config.sample.steps = 50
  config.sample.num_images = 64
  config.sample.batch_size = 64
  return config
