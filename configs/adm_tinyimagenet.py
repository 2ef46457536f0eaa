r"""ADM on Tiny ImageNet 64x64: the survey's generation experiment (Dhariwal & Nichol 2021).

Command (one GPU/TPU host; add --distributed on a multi-host TPU slice):

  python -m diffseg_jax.main --config=configs/adm_tinyimagenet.py --workdir=runs/adm_tin \
      --config.data.manual_dir=/folder/holding/tiny-imagenet-200.zip
  python -m diffseg_jax.main --config=configs/adm_tinyimagenet.py --workdir=runs/adm_tin \
      --mode=sample --config.sample.num_images=10000

Model: ADM U-Net, 128 channels, mults (1,2,3,4), 2 res blocks per level, attention at 16x16
and 8x8 with 64-channel heads, scale-shift norm, BigGAN up/down blocks, dropout 0.1,
class-conditional (200 classes), learned variances with the hybrid loss, linear schedule with
1000 steps (about 120M parameters).

Data: the first run prepares the TFDS dataset (about 240 MB of JPEGs, a few minutes) into
data.tfds_data_dir (default ~/tensorflow_datasets); later runs read it from there.

Hardware: written for one 8-device accelerator host (e.g. a TPU v4-8 or 8 A100s) with global
batch 256 in bfloat16 compute; on fewer devices lower train.batch_size and the learning rate.
It is far too large for a CPU.

Expected result: the loss (MSE part) falls below 0.03 within 20k steps; class-conditional
samples look like their class after about 100k steps; ADM reports FID in the low teens on
ImageNet-64 at 540k steps of batch 2048; Tiny ImageNet with its 100k images should land in the
same range once converged (measure with the ADM evaluation suite).
"""

from diffseg_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = "tiny_imagenet"
  config.data.manual_dir = "."  # the folder holding tiny-imagenet-200.zip (or its contents)
  config.data.split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 64
  config.data.channels = 3
  config.data.num_classes = 200
  config.data.random_flip = True

  config.model.model_channels = 128
  config.model.channel_mult = (1, 2, 3, 4)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (16, 8)
  config.model.num_head_channels = 64
  config.model.use_scale_shift_norm = True
  config.model.resblock_updown = True
  config.model.use_new_attention_order = True
  config.model.dropout = 0.1
  config.model.class_cond = True
  config.model.dtype = "bfloat16"

  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_schedule = "linear"
  config.diffusion.learn_sigma = True

  config.optim.learning_rate = 1e-4
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 0.0
  config.optim.ema_rates = (0.9999,)

  config.train.batch_size = 256
  config.train.num_steps = 500_000
  config.train.log_every = 500
  config.train.checkpoint_every = 10_000
  config.train.sample_every = 10_000
  config.train.num_sample_images = 64

  config.sample.sampler = "ddpm"
  config.sample.steps = 250
  config.sample.num_images = 50_000
  config.sample.batch_size = 256
  return config
