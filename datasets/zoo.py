"""Built-in datasets. Importing this module registers them (the registry does it lazily)."""
from __future__ import annotations

from datasets import generic, synthderm  # noqa: F401
from datasets import (chest_xray_pneumonia, chestxray14, derm7pt, fitzpatrick17k, ham10000, isic2019,  # noqa: F401
                      isic2020, medmnist, pad_ufes20)
