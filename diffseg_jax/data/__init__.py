"""Datasets and input pipelines."""

from diffseg_jax.data.input_pipeline import ArraySource
from diffseg_jax.data.input_pipeline import IGNORE_ID
from diffseg_jax.data.input_pipeline import eval_batches
from diffseg_jax.data.input_pipeline import eval_iterator
from diffseg_jax.data.input_pipeline import load_source
from diffseg_jax.data.input_pipeline import preprocessing
from diffseg_jax.data.input_pipeline import read_split
from diffseg_jax.data.input_pipeline import to_model_range
from diffseg_jax.data.input_pipeline import train_batches
from diffseg_jax.data.input_pipeline import train_iterator
