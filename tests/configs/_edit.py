"""Setting any config key to a value of any type, as a mistyped command-line override would."""
from __future__ import annotations

import ml_collections


def set_key(config: ml_collections.ConfigDict, path: str, value) -> None:
  """Sets the dotted `path` of `config` to `value` in place."""
  with config.unlocked():
    node = config
    *parents, last = path.split('.')
    for p in parents:
      node = node[p]
    if last in node:
      del node[last]  # ConfigDict keeps a key's type: a mistyped value needs a fresh key
    node[last] = value
