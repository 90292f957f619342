"""The package list, which setup.cfg cannot write: the dataset builders of the top-level folder
`datasets/` ship as `hcnn_datasets` (an installed `datasets` is Hugging Face's). Everything else
is in setup.cfg."""
from setuptools import find_packages, setup

BUILDERS = 'hcnn_datasets'

setup(
    packages=find_packages(include=['hcnn_jax', 'hcnn_jax.*']) +
    [BUILDERS] + [f'{BUILDERS}.{name}' for name in find_packages('datasets')],
    package_dir={BUILDERS: 'datasets'},
)
