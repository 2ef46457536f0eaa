"""The configuration schema: every key a config may set, with its default.

Each file in ``configs/`` starts from :func:`base_config` and changes values; the dict is locked,
so a misspelt key fails where it is written. :func:`check_keys` checks any config (or a
command-line override) against this schema and names the valid keys where one is unknown;
:func:`validate` checks a whole config, its keys and its values, before a run starts.
"""

from typing import Iterable

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Returns the schema with defaults: an unconditional DDPM on Fashion-MNIST."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # generation (diffseg_jax.methods.generation) | segdiff | supervised
  # (diffseg_jax.methods.segmentation: masks of data.mask_classes classes)
  c.method = "generation"

  c.data = ml_collections.ConfigDict()  # see diffseg_jax/data/input_pipeline.py
  # A TFDS name: this project's builders (diffseg_jax/data/builders: fashion_mnist_idx,
  # mnist_idx, tiny_imagenet, isbi2012, camvid_segnet, magnetic_tile,
  # label_efficient_segmentation/<set>, image_mask_folder), the TFDS catalogue (cifar10,
  # oxford_iiit_pet, cityscapes/semantic_segmentation, imagenet_resized/64x64, ...), or
  # "shapes" (procedural, no files).
  c.data.name = "fashion_mnist_idx"
  c.data.manual_dir = "/usr/share/datasets/fashion-mnist"  # the files a builder reads
  c.data.tfds_data_dir = ""  # prepared datasets; "": $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.split = "train"  # training split; TFDS slicing works ("train[:90%]")
  c.data.eval_split = "test"
  c.data.image_size = 28  # spatial size the model sees (square)
  c.data.channels = 1
  c.data.num_classes = 10  # image-level classes (class-conditional models)
  c.data.mask_classes = 0  # segmentation classes K: masks hold 0..K-1 and 255 (ignore); 0: none
  c.data.resize = 0  # before a crop: resize the shorter side to this; 0 keeps the size
  c.data.crop = "none"  # none (resize to image_size) | center | random (eval: center)
  c.data.random_flip = False  # training: left-right, image and mask together
  c.data.eval_batch_size = 0  # global; 0: train.batch_size
  c.data.prefetch = 2  # batches prepared ahead on a background thread; 0: none

  c.model = ml_collections.ConfigDict()  # the ADM U-Net (diffseg_jax.nn.UNetModel)
  c.model.model_channels = 64
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (7,)  # feature-map sizes (as guided-diffusion's flag)
  c.model.dropout = 0.0
  c.model.num_heads = 4
  c.model.num_head_channels = -1
  c.model.num_heads_upsample = -1
  c.model.use_scale_shift_norm = True
  c.model.resblock_updown = False
  c.model.use_new_attention_order = False
  c.model.conv_resample = True
  c.model.class_cond = False
  c.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (params stay float32)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = "linear"  # linear | cosine | sqrt_linear
  c.diffusion.model_mean_type = "eps"  # eps | x0 | v
  c.diffusion.learn_sigma = False  # True: learned_range variance and the hybrid loss
  c.diffusion.model_var_type = "fixed_small"  # used when learn_sigma is False
  c.diffusion.rescale_learned_sigmas = True  # hybrid loss VLB scaled by T/1000 (ADM)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"  # constant | cosine (decay to 0 at optim.decay_steps)
  c.optim.decay_steps = 0  # where the cosine reaches 0; 0: train.num_steps
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.grad_clip_norm = 1.0  # 0 disables clipping
  c.optim.ema_rates = (0.9999,)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global, over all devices and hosts
  c.train.num_steps = 10_000
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.sample_every = 0  # 0: only at the end
  c.train.num_sample_images = 16

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = "ddim"  # ddim | ddpm
  c.sample.steps = 50  # respaced steps (ddpm uses all num_timesteps when 0)
  c.sample.eta = 0.0
  c.sample.num_images = 64
  c.sample.batch_size = 64
  c.sample.clip_denoised = True
  c.sample.ema_index = 0  # which of optim.ema_rates to sample with; -1: raw params
  c.sample.class_label = -1  # class-conditional models: -1 cycles through the classes

  c.segdiff = ml_collections.ConfigDict()  # methods segdiff and supervised
  c.segdiff.rrdb_blocks = 3  # RRDBs in the image encoder's trunk
  c.segdiff.rrdb_features = 64  # the image encoder's width
  c.segdiff.rrdb_growth = 32  # dense-block growth channels
  c.segdiff.mask_encoding = "auto"  # auto (binary if 2 classes, else onehot) | binary | onehot | bits

  c.segment = ml_collections.ConfigDict()  # inference of segmentation methods
  c.segment.sampler = "ddpm"  # ddpm | ddim
  c.segment.steps = 0  # respaced sampling steps; 0: all diffusion.num_timesteps
  c.segment.eta = 0.0  # DDIM noise scale
  c.segment.clip_denoised = True  # clip each step's predicted mask to [-1, 1]
  c.segment.ensemble = 9  # masks sampled per image (SegDiff: 9)
  c.segment.batch_size = 4  # images per call (each with its ensemble)
  c.segment.patch_size = 0  # > 0: segment in overlapping windows of this size; 0: whole images
  c.segment.patch_stride = 0  # window step; 0: half a window
  c.segment.num_images = 0  # images of data.eval_split to segment / evaluate; 0: all
  # True: whole images, the shorter side resized to data.resize (when set); False: the
  # evaluation pass's centre crops of data.image_size
  c.segment.whole_images = True
  c.segment.ema_index = 0  # which of optim.ema_rates; -1: raw params

  c.evaluate = ml_collections.ConfigDict()  # --mode=evaluate (diffseg_jax.evaluation)
  c.evaluate.features = "fashion_mnist"  # fashion_mnist (packaged, 28x28 grey) | inception
  c.evaluate.inception_weights = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth
  c.evaluate.num_samples = 10_000  # drawn from the newest checkpoint (ADM: 50,000)
  c.evaluate.samples_npz = ""  # evaluate this npz's arr_0 instead of sampling
  c.evaluate.reference_npz = ""  # ADM reference batch; "": the data.* dataset's reference_split
  c.evaluate.reference_split = "test"
  c.evaluate.num_reference = 0  # the first N reference images; 0: all
  c.evaluate.batch_size = 100  # images per feature-extraction batch
  c.evaluate.nearest_k = 3  # precision/recall manifold neighbourhood (ADM: 3)
  c.evaluate.is_split_size = 5000  # Inception Score split size (ADM: 5000)
  c.evaluate.half_precision_distances = True  # precision/recall distances in float16 as ADM
  c.lock()  # configs change values; a new (misspelt) key raises where it is written
  return c


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  """``{"optim.learning_rate": 1e-4, ...}``: every leaf under its dotted key."""
  flat = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten(value, path + "."))
    else:
      flat[path] = value
  return flat


def check_keys(keys: Iterable[str], schema: ml_collections.ConfigDict | None = None) -> None:
  """Raises ``ValueError`` for any dotted key (``"optim.learning_rate"``) not in the schema.

  Only leaf keys are valid: a section (``"data"``) cannot be set to a value. The message lists
  every unknown key and the valid keys of the section it names.
  """
  schema = base_config() if schema is None else schema
  valid = set(flatten(schema))
  sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
  unknown = sorted(k for k in keys if k not in valid)
  if not unknown:
    return
  lines = []
  for key in unknown:
    if key in sections:
      children = sorted(k for k in valid if k.startswith(key + "."))
      lines.append(f"  {key!r} is a section, not a value: set its keys, {', '.join(children)}")
      continue
    section = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = sorted(k for k in valid if section and k.startswith(section + "."))
    siblings = siblings or sorted({k.split(".")[0] for k in valid})
    lines.append(f"  {key!r}: valid keys here are {', '.join(siblings)}")
  raise ValueError("Unknown config key(s):\n" + "\n".join(lines))


# Keys that must hold one of a few values, and keys that must be positive integers.
_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "diffusion.model_var_type": ("fixed_small", "fixed_large", "learned_range", "learned"),
    "sample.sampler": ("ddpm", "ddim"),
    "data.crop": ("none", "center", "random"),
    "evaluate.features": ("fashion_mnist", "inception"),
    "method": ("generation", "segdiff", "supervised"),
    "segment.sampler": ("ddpm", "ddim"),
    "segdiff.mask_encoding": ("auto", "binary", "onehot", "bits"),
}
# Keys that must be integers >= 0, and what 0 means for each.
_ZERO_MEANS = {"data.mask_classes": "no masks", "data.resize": "keep the size",
               "data.eval_batch_size": "train.batch_size", "data.prefetch": "no prefetching",
               "evaluate.num_reference": "every reference image",
               "segment.steps": "all diffusion.num_timesteps",
               "segment.patch_size": "whole images", "segment.patch_stride": "half a window",
               "segment.num_images": "the whole split", "segdiff.rrdb_blocks": "no RRDBs",
               "optim.decay_steps": "train.num_steps"}
_POSITIVE = ("data.image_size", "data.channels", "train.batch_size", "train.num_steps",
             "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.num_sample_images", "sample.num_images",
             "sample.batch_size", "evaluate.num_samples", "evaluate.batch_size",
             "evaluate.nearest_k", "evaluate.is_split_size", "segment.ensemble",
             "segment.batch_size", "segdiff.rrdb_features", "segdiff.rrdb_growth")


def _value_errors(config: ml_collections.ConfigDict) -> list[str]:
  """One line per invalid value of a config whose keys are those of the schema."""
  flat = flatten(config)
  errors = [f"{key}={flat[key]!r} must be one of {', '.join(map(repr, allowed))}."
            for key, allowed in _CHOICES.items() if flat[key] not in allowed]
  errors += [f"{key}={flat[key]!r} must be a positive integer."
             for key in _POSITIVE if not (isinstance(flat[key], int) and flat[key] > 0)]
  if flat["train.sample_every"] < 0:
    errors.append(f"train.sample_every={flat['train.sample_every']!r} must be >= 0 (0: sample "
                  "only at the end).")
  for key in _ZERO_MEANS:
    if not (isinstance(flat[key], int) and flat[key] >= 0):
      errors.append(f"{key}={flat[key]!r} must be an integer >= 0 (0: {_ZERO_MEANS[key]}).")
  if not flat["data.mask_classes"] <= 255:
    errors.append(f"data.mask_classes={flat['data.mask_classes']!r} must be at most 255 (mask "
                  "ids are stored as uint8, 255 being the ignore id).")
  if flat["data.crop"] == "none" and flat["data.resize"]:
    errors.append(f"data.resize={flat['data.resize']!r} only applies before a crop: with "
                  "data.crop='none' the image is resized to data.image_size; set data.resize=0 "
                  "or data.crop='center'/'random'.")
  if 0 < flat["data.resize"] < flat["data.image_size"]:
    errors.append(f"data.resize={flat['data.resize']!r} is smaller than the crop "
                  f"data.image_size={flat['data.image_size']!r}; set data.resize >= image_size "
                  "(or 0 to crop at the original size).")
  num_ema = len(flat["optim.ema_rates"])
  if not -1 <= flat["sample.ema_index"] < num_ema:
    errors.append(f"sample.ema_index={flat['sample.ema_index']!r} must be in -1..{num_ema - 1}: "
                  f"-1 for the raw parameters or the index of one of optim.ema_rates="
                  f"{tuple(flat['optim.ema_rates'])}.")
  num_classes = flat["data.num_classes"]
  if not -1 <= flat["sample.class_label"] < num_classes:
    errors.append(f"sample.class_label={flat['sample.class_label']!r} must be in "
                  f"-1..{num_classes - 1} (data.num_classes={num_classes}; -1 cycles through "
                  "the classes).")
  if not 0.0 <= flat["sample.eta"] <= 1.0:
    errors.append(f"sample.eta={flat['sample.eta']!r} must be in [0, 1] (0: deterministic DDIM, "
                  "1: DDPM-like noise; DDIM's sigma formula is not defined beyond).")
  var_type, default_var_type = flat["diffusion.model_var_type"], "fixed_small"
  if flat["diffusion.learn_sigma"] and var_type != default_var_type:
    errors.append(f"diffusion.model_var_type={var_type!r} is not used with "
                  "diffusion.learn_sigma=True (the variance is then learned, 'learned_range'): "
                  f"leave model_var_type at {default_var_type!r}, or set learn_sigma=False "
                  "for a fixed variance.")
  if not flat["diffusion.learn_sigma"] and var_type in ("learned", "learned_range"):
    errors.append(f"diffusion.model_var_type={var_type!r} needs a model that outputs its "
                  "variance: set diffusion.learn_sigma=True (and leave model_var_type at "
                  f"{default_var_type!r}) instead.")
  errors += _segmentation_errors(flat)
  return errors


def _segmentation_errors(flat: dict[str, object]) -> list[str]:
  """Lines for settings of the segmentation methods that do not fit together."""
  if flat["method"] == "generation":
    return []
  errors = []
  method, classes = flat["method"], flat["data.mask_classes"]
  if classes < 2:
    errors.append(f"method={method!r} segments masks: set data.mask_classes to the number of "
                  f"classes (>= 2; 2 for binary masks), not {classes}.")
  elif flat["segdiff.mask_encoding"] == "binary" and classes != 2:
    errors.append(f"segdiff.mask_encoding='binary' needs data.mask_classes=2, not {classes}; "
                  "use 'onehot', 'bits' or 'auto'.")
  if flat["model.class_cond"]:
    errors.append(f"model.class_cond=True does not apply to method={method!r} (the image, not "
                  "a label, conditions the masks); set it to False.")
  if flat["diffusion.learn_sigma"]:
    errors.append(f"diffusion.learn_sigma=True is not supported by method={method!r} (SegDiff "
                  "trains the MSE only); set it to False.")
  if flat["segment.steps"] > flat["diffusion.num_timesteps"]:
    errors.append(f"segment.steps={flat['segment.steps']!r} is more than the schedule's "
                  f"{flat['diffusion.num_timesteps']} steps (diffusion.num_timesteps); use "
                  f"1..{flat['diffusion.num_timesteps']}, or 0 for all.")
  if flat["segment.patch_stride"] > flat["segment.patch_size"]:
    errors.append(f"segment.patch_stride={flat['segment.patch_stride']!r} must be at most "
                  f"segment.patch_size={flat['segment.patch_size']!r} (windows must overlap "
                  "or touch).")
  if not 0.0 <= flat["segment.eta"] <= 1.0:
    errors.append(f"segment.eta={flat['segment.eta']!r} must be in [0, 1].")
  num_ema = len(flat["optim.ema_rates"])
  if not -1 <= flat["segment.ema_index"] < num_ema:
    errors.append(f"segment.ema_index={flat['segment.ema_index']!r} must be in "
                  f"-1..{num_ema - 1} (-1: raw parameters).")
  return errors


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a whole config: only keys of the schema (see :func:`check_keys`), valid values.

  Raises:
    ValueError: unknown or missing keys (with the valid ones), or invalid values, one line each
      naming the key, its value and what is allowed.
  """
  keys = flatten(config)
  check_keys(keys)
  missing = sorted(set(flatten(base_config())) - set(keys))
  if missing:
    raise ValueError(f"Missing config key(s): {', '.join(missing)}. Build configs from "
                     "diffseg_jax.config.base_config(), which sets every key.")
  errors = _value_errors(config)
  if errors:
    raise ValueError("Invalid config value(s):\n  " + "\n  ".join(errors))
