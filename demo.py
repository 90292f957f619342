"""The main job (`make demo`): train a CPU-sized Harmonic CNN on the embedded dataset, score it
against a trivial baseline, and tag a clip it has never heard.

    python demo.py --workdir runs/demo [--data_dir data] [--config.num_epochs=4]

The checkout's name for the console script `hcnn-demo`: the code and its documentation are in
hcnn_jax/cli/demo.py, which the wheel ships.
"""
from hcnn_jax.cli.demo import define_flags, labels_of, main, prior_baseline, run  # noqa: F401

if __name__ == '__main__':
  run(prog='demo.py')
