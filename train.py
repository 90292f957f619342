"""Trains a model from a config and evaluates its best checkpoint on the test split.

    python train.py --config hcnn_jax/configs/hcnn_synth_tiny.py --workdir runs/synth_tiny

The checkout's name for the console script `hcnn-train`: the code and its documentation are in
hcnn_jax/cli/train.py, which the wheel ships.
"""
from hcnn_jax.cli.train import define_flags, ensure_embedded_dataset, main, run  # noqa: F401

if __name__ == '__main__':
  run(prog='train.py')
