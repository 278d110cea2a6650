"""Built-in encoders. Importing this module registers them (the registry does it lazily)."""
from __future__ import annotations

from pretrained import torchvision_zoo  # noqa: F401  (registers torchvision random + ImageNet encoders)
from pretrained.ssl import recipes  # noqa: F401,E402  (registers built-in pretraining recipes, e.g. resnet18-simclr-synthderm)
from pretrained.local_registry import load_local_encoders  # noqa: E402

load_local_encoders()  # last: encoders made by `cli.py pretrain` (a broken file is logged, never fatal)
