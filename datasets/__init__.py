"""TFDS builders for every dataset of the project (one folder each) and the build entry point.

`build(name, data_dir, config_name=None, manual_dir=None)` prepares one as array_record;
`hcnn-build NAME --data_dir DIR` is its CLI. Builders are imported only when asked for.

In a checkout this package is `datasets`; the wheel installs it as `hcnn_datasets`, since an
installed `datasets` is Hugging Face's. Its modules import each other relatively, so they work
under either name (`hcnn_jax.data.builders` finds whichever is there).
"""
import warnings

# `python -m datasets.build` runs a module this package has already imported (to expose `build`);
# runpy warns about that, harmlessly, since the module holds no import-time state.
warnings.filterwarnings('ignore', message=rf"'{__name__}\.build' found in sys\.modules",
                        category=RuntimeWarning)

from .build import DATASETS, build, is_built  # noqa: E402

__all__ = ['DATASETS', 'build', 'is_built']
