"""TFDS builders for every dataset of the project (one folder each) and the build entry point.

`build(name, data_dir, config_name=None, manual_dir=None)` prepares one as array_record;
`python -m datasets.build NAME --data_dir DIR` is its CLI. Builders are imported only when asked for.
"""
import warnings

# `python -m datasets.build` runs a module this package has already imported (to expose `build`);
# runpy warns about that, harmlessly, since the module holds no import-time state.
warnings.filterwarnings('ignore', message=r"'datasets\.build' found in sys\.modules",
                        category=RuntimeWarning)

from datasets.build import DATASETS, build, is_built  # noqa: E402

__all__ = ['DATASETS', 'build', 'is_built']
