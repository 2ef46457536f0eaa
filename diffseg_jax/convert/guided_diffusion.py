"""Converting openai/guided-diffusion checkpoints to the Flax ADM networks.

``from_guided_diffusion(checkpoint, flags, model=...)`` builds the config of the Flax model
from the reference constructor flags, reads the state dict and returns ``(config, params)``:

* ``model="unet"``: ``UNetModel`` (reference ``UNetModel``);
* ``model="superres"``: ``SuperResUNetModel`` (reference ``SuperResModel``);
* ``model="classifier"``: ``EncoderUNetModel`` (reference ``EncoderUNetModel``).

Parameter naming. A torch key ``<module path>.<leaf>`` maps to a flax path by joining every
numeric index to the name before it with ``_`` (``input_blocks.4.1.qkv.weight`` ->
``input_blocks_4_1/qkv/kernel``). The modules are:

==========================================  ============================================
torch                                       flax
==========================================  ============================================
``time_embed.{0,2}``                        ``time_embed_{0,2}`` (Dense)
``label_emb``                               ``label_emb`` (Embed)
``input_blocks.0.0``                        ``input_blocks_0_0`` (stem conv)
``input_blocks.i.j``, ``output_blocks.i.j`` ``input_blocks_i_j``, ``output_blocks_i_j``
``middle_block.{0,1,2}``                    ``middle_block_{0,1,2}``
ResBlock ``in_layers.{0,2}``,               ``in_layers_{0,2}``, ``emb_layers_1``,
``emb_layers.1``, ``out_layers.{0,3}``,     ``out_layers_{0,3}``, ``skip_connection``
``skip_connection``
AttentionBlock ``norm``, ``qkv``,           ``norm``, ``qkv``, ``proj_out``
``proj_out``
Downsample ``op``, Upsample ``conv``        ``op``, ``conv``
``out.0``, ``out.2`` (U-Nets)               ``out_0``, ``out_2``
classifier heads ``out.{0,1,2,3}``,         ``out_{0,1,2,3}``, ``out_2/qkv_proj``,
``out.2.{qkv_proj,c_proj}``                 ``out_2/c_proj``
==========================================  ============================================

Leaves: ``bias`` is copied. ``weight`` becomes ``scale`` for GroupNorm (1-D), ``embedding``
for ``label_emb``, and ``kernel`` otherwise: Linear ``[out, in] -> [in, out]``, Conv1d with
kernel size 1 ``[out, in, 1] -> [in, out]`` (a Dense), Conv2d
``[out, in, kh, kw] -> [kh, kw, in, out]``. The attention pool's ``positional_embedding``
``[C, T]`` becomes ``[T, C]``. All parameters are converted to float32.

``flags`` are the reference constructor arguments (``dims`` must be 2; ``use_fp16`` and
``use_checkpoint`` are accepted and ignored). The training scripts' flag dicts
(``model_and_diffusion_defaults``, ``sr_model_and_diffusion_defaults``,
``classifier_and_diffusion_defaults`` style, detected by their ``num_channels`` /
``learn_sigma`` / ``large_size`` / ``classifier_*`` keys) are accepted too; missing script
flags take the scripts' defaults and the diffusion flags are ignored.
"""

from collections.abc import Mapping
import re
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffseg_jax.convert.checkpoint_io import Checkpoint, load_state_dict
from diffseg_jax.nn.unet import EncoderUNetModel, SuperResUNetModel, UNetModel

MODELS = {"unet": UNetModel, "superres": SuperResUNetModel, "classifier": EncoderUNetModel}

_REQUIRED = object()

_COMMON_FLAGS = {
    "image_size": _REQUIRED,
    "in_channels": _REQUIRED,
    "model_channels": _REQUIRED,
    "out_channels": _REQUIRED,
    "num_res_blocks": _REQUIRED,
    "attention_resolutions": _REQUIRED,
    "dropout": 0.0,
    "channel_mult": (1, 2, 4, 8),
    "conv_resample": True,
    "num_heads": 1,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "use_new_attention_order": False,
}
_CONSTRUCTOR_FLAGS = {
    "unet": {**_COMMON_FLAGS, "num_classes": None},
    "superres": {**_COMMON_FLAGS, "num_classes": None},
    "classifier": {**_COMMON_FLAGS, "pool": "adaptive"},
}
_IGNORED_FLAGS = ("dims", "use_checkpoint", "use_fp16")

_NUM_CLASSES = 1000
_DIFFUSION_DEFAULTS = {
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
}
_SCRIPT_MODEL_DEFAULTS = {
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
}
_SCRIPT_DEFAULTS = {
    "unet": {
        "image_size": 64,
        "channel_mult": "",
        "use_new_attention_order": False,
        **_SCRIPT_MODEL_DEFAULTS,
        **_DIFFUSION_DEFAULTS,
    },
    "superres": {
        "large_size": 256,
        "small_size": 64,
        **_SCRIPT_MODEL_DEFAULTS,
        **_DIFFUSION_DEFAULTS,
    },
    "classifier": {
        "image_size": 64,
        "classifier_use_fp16": False,
        "classifier_width": 128,
        "classifier_depth": 2,
        "classifier_attention_resolutions": "32,16,8",
        "classifier_use_scale_shift_norm": True,
        "classifier_resblock_updown": True,
        "classifier_pool": "attention",
        **_DIFFUSION_DEFAULTS,
    },
}
_SCRIPT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
_SCRIPT_SR_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def _is_script_flags(flags: Mapping[str, Any], model: str) -> bool:
  if model == "classifier":
    return any(key.startswith("classifier_") for key in flags)
  return any(key in flags for key in ("learn_sigma", "num_channels", "large_size"))


def _check_names(flags: Mapping[str, Any], valid: Mapping[str, Any], what: str) -> None:
  unknown = sorted(set(flags) - set(valid))
  if unknown:
    raise ValueError(f"unknown {what} flags {unknown}; valid flags: {sorted(valid)}.")


def _default_channel_mult(table: Mapping[int, tuple], size: int) -> tuple:
  if size not in table:
    raise ValueError(f"no default channel_mult for image size {size}; sizes: {sorted(table)}.")
  return table[size]


def _attention_rates(resolutions: str, image_size: int) -> tuple[int, ...]:
  return tuple(image_size // int(res) for res in resolutions.split(","))


def _constructor_from_script(flags: Mapping[str, Any], model: str) -> dict[str, Any]:
  """Translates training-script flags as guided-diffusion's ``script_util`` does."""
  defaults = _SCRIPT_DEFAULTS[model]
  _check_names(flags, defaults, f"{model} script")
  f = {**defaults, **flags}
  if model == "classifier":
    size = f["image_size"]
    return {
        "image_size": size,
        "in_channels": 3,
        "model_channels": f["classifier_width"],
        "out_channels": _NUM_CLASSES,
        "num_res_blocks": f["classifier_depth"],
        "attention_resolutions": _attention_rates(f["classifier_attention_resolutions"], size),
        "channel_mult": _default_channel_mult(_SCRIPT_CHANNEL_MULT, size),
        "num_head_channels": 64,
        "use_scale_shift_norm": f["classifier_use_scale_shift_norm"],
        "resblock_updown": f["classifier_resblock_updown"],
        "pool": f["classifier_pool"],
    }
  if model == "superres":
    size = f["large_size"]
    channel_mult = _default_channel_mult(_SCRIPT_SR_CHANNEL_MULT, size)
    new_order = False
  else:
    size = f["image_size"]
    if f["channel_mult"]:
      channel_mult = tuple(int(m) for m in f["channel_mult"].split(","))
    else:
      channel_mult = _default_channel_mult(_SCRIPT_CHANNEL_MULT, size)
    new_order = f["use_new_attention_order"]
  return {
      "image_size": size,
      "in_channels": 3,
      "model_channels": f["num_channels"],
      "out_channels": 6 if f["learn_sigma"] else 3,
      "num_res_blocks": f["num_res_blocks"],
      "attention_resolutions": _attention_rates(f["attention_resolutions"], size),
      "dropout": f["dropout"],
      "channel_mult": channel_mult,
      "num_classes": _NUM_CLASSES if f["class_cond"] else None,
      "num_heads": f["num_heads"],
      "num_head_channels": f["num_head_channels"],
      "num_heads_upsample": f["num_heads_upsample"],
      "use_scale_shift_norm": f["use_scale_shift_norm"],
      "resblock_updown": f["resblock_updown"],
      "use_new_attention_order": new_order,
  }


def config_from_flags(
    flags: Mapping[str, Any], model: str = "unet"
) -> ml_collections.ConfigDict:
  """Turns guided-diffusion flags into the fields of the matching Flax model.

  Args:
    flags: reference constructor arguments, or training-script flags (see module docstring).
    model: ``"unet"``, ``"superres"`` or ``"classifier"``.

  Returns:
    A ConfigDict such that ``MODELS[model](**config)`` is the equivalent Flax model.

  Raises:
    ValueError: on an unknown model or flag, a missing required flag, or ``dims != 2``.
  """
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODELS)}.")
  if _is_script_flags(flags, model):
    flags = _constructor_from_script(flags, model)
  fields = _CONSTRUCTOR_FLAGS[model]
  _check_names(flags, {**fields, **dict.fromkeys(_IGNORED_FLAGS)}, model)
  if flags.get("dims", 2) != 2:
    raise ValueError(f"only dims=2 is supported, got dims={flags['dims']}.")
  missing = sorted(
      name for name, default in fields.items() if default is _REQUIRED and name not in flags
  )
  if missing:
    raise ValueError(f"missing required {model} flags {missing}.")
  config = {name: flags.get(name, default) for name, default in fields.items()}
  config["attention_resolutions"] = tuple(config["attention_resolutions"])
  config["channel_mult"] = tuple(config["channel_mult"])
  return ml_collections.ConfigDict(config)


def _flax_module_path(torch_modules: list[str]) -> list[str]:
  path = []
  for part in torch_modules:
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  return path


def convert_entry(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  """Maps one torch state-dict entry to its flax parameter path and layout (float32)."""
  *modules, leaf = key.split(".")
  path = _flax_module_path(modules)
  value = np.asarray(value, dtype=np.float32)
  if leaf == "weight":
    if path and path[-1] == "label_emb":
      leaf = "embedding"
    elif value.ndim == 1:
      leaf = "scale"
    else:
      leaf = "kernel"
      if value.ndim == 3 and value.shape[-1] == 1:
        value = value[..., 0]
      axes = {2: (1, 0), 3: (2, 1, 0), 4: (2, 3, 1, 0)}.get(value.ndim)
      if axes:
        value = value.transpose(axes)
  elif leaf == "positional_embedding":
    value = value.T
  return (*path, leaf), np.ascontiguousarray(value)


def torch_key(path: tuple[str, ...]) -> str:
  """The torch state-dict key of a flax parameter path (inverse of ``convert_entry``)."""
  *modules, leaf = path
  leaf = "weight" if leaf in ("kernel", "scale", "embedding") else leaf
  return ".".join([re.sub(r"_(\d+)(?=_|$)", r".\1", m) for m in modules] + [leaf])


def _example_inputs(config: ml_collections.ConfigDict, model: str) -> dict[str, Any]:
  size = config.image_size
  inputs = {
      "x": jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32),
      "timesteps": jax.ShapeDtypeStruct((1,), jnp.int32),
  }
  if model == "superres":
    inputs["low_res"] = inputs["x"]
  if config.get("num_classes") is not None:
    inputs["y"] = jax.ShapeDtypeStruct((1,), jnp.int32)
  return inputs


def expected_param_shapes(
    config: ml_collections.ConfigDict, model: str = "unet"
) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat ``{flax path: shape}`` of the model's parameters, from ``jax.eval_shape``."""
  module = MODELS[model](**config)
  variables = jax.eval_shape(
      module.init, jax.random.key(0), **_example_inputs(config, model)
  )
  flat = flax.traverse_util.flatten_dict(variables["params"])
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _mismatch_report(
    converted: Mapping[tuple[str, ...], np.ndarray],
    sources: Mapping[tuple[str, ...], tuple[str, tuple[int, ...]]],
    expected: Mapping[tuple[str, ...], tuple[int, ...]],
) -> str:
  """Lists missing, unexpected and mis-shaped parameters ('' when everything matches)."""
  lines = []
  missing = sorted(set(expected) - set(converted))
  if missing:
    lines.append(f"missing from the checkpoint ({len(missing)}):")
    lines += [f"  {torch_key(p)} (flax {'/'.join(p)}, shape {expected[p]})" for p in missing]
  unexpected = sorted(set(converted) - set(expected))
  if unexpected:
    lines.append(f"unexpected in the checkpoint ({len(unexpected)}):")
    lines += [f"  {sources[p][0]} (shape {sources[p][1]})" for p in unexpected]
  misshaped = sorted(
      p for p in set(converted) & set(expected) if converted[p].shape != expected[p]
  )
  if misshaped:
    lines.append(f"mis-shaped ({len(misshaped)}):")
    lines += [
        f"  {sources[p][0]}: checkpoint {sources[p][1]} -> flax {'/'.join(p)} "
        f"{converted[p].shape}, model expects {expected[p]}"
        for p in misshaped
    ]
  return "\n".join(lines)


def from_guided_diffusion(
    checkpoint: Checkpoint, flags: Mapping[str, Any], *, model: str = "unet"
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Converts a guided-diffusion checkpoint to Flax parameters.

  Args:
    checkpoint: a ``.pt``/``.pth``/``.safetensors``/``.npz`` path or a mapping of
      state-dict names to numpy arrays or torch tensors.
    flags: reference constructor (or training-script) flags.
    model: ``"unet"``, ``"superres"`` or ``"classifier"``.

  Returns:
    ``(config, params)``: ``MODELS[model](**config)`` is the Flax model and ``params`` its
    float32 parameter tree, for ``model.apply({"params": params}, ...)``.

  Raises:
    ValueError: for bad flags, or one error listing every missing, unexpected and
      mis-shaped parameter.
  """
  config = config_from_flags(flags, model)
  converted, sources = {}, {}
  for key, value in load_state_dict(checkpoint).items():
    path, array = convert_entry(key, value)
    converted[path] = array
    sources[path] = (key, tuple(value.shape))
  report = _mismatch_report(converted, sources, expected_param_shapes(config, model))
  if report:
    raise ValueError(
        f"checkpoint does not match the {MODELS[model].__name__} built from the flags:\n"
        + report
    )
  params = {path: jnp.asarray(array) for path, array in converted.items()}
  return config, flax.traverse_util.unflatten_dict(params)
