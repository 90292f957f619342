"""Track-level evaluation of a trained run (16 chunks per track, mean of the predictions).

    python eval.py --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/mtat --split test

The checkout's name for the console script `hcnn-eval`: the code and its documentation are in
hcnn_jax/cli/eval.py, which the wheel ships.
"""
from hcnn_jax.cli.eval import define_flags, main, run  # noqa: F401

if __name__ == '__main__':
  run(prog='eval.py')
