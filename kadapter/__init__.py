"""kadapter: K-Adapter (Wang et al., Findings of ACL 2021) from Python.

    from kadapter import KAdapterForTask, KAdapterModel

    model = KAdapterForTask.from_pretrained("kadapter-work/finetuned/openentity-fac+lin")
    model.predict([{"sent": "Paris is in France .", "start": 0, "end": 5}], scores=True)

    encoder = KAdapterModel.from_pretrained("kadapter-work/compositions/fac+lin")
    encoder.encode(["Paris is in France ."], pool="mean")   # (1, (1 + 2) × hidden)

Importing kadapter registers its model type with transformers' `AutoConfig` and `AutoModel`, so
`AutoModel.from_pretrained(finetuned_folder)` loads a finetuned model. The public names are
imported on first use (PEP 562); the command line (`kadapter`) does not import this package.
Documentation: docs/python-api.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from kadapter_cli import __version__
from kadapter_cli.api.for_task import register as _register

_register()

# public name → the module that defines it
_PUBLIC = {
    "KAdapterModel": "kadapter_cli.api.encoder",
    "KAdapterForTask": "kadapter_cli.api.for_task",
    "KAdapterConfig": "kadapter_cli.api.for_task",
    "load_adapter": "kadapter_cli.modeling.adapter",
    "encode_file": "kadapter_cli.api.features_file",
    "BadInput": "kadapter_cli.errors",
}

__all__ = ["__version__", "KAdapterModel", "KAdapterForTask", "KAdapterConfig", "load_adapter", "encode_file",
           "BadInput"]

if TYPE_CHECKING:
    from kadapter_cli.api.encoder import KAdapterModel
    from kadapter_cli.api.features_file import encode_file
    from kadapter_cli.api.for_task import KAdapterConfig, KAdapterForTask
    from kadapter_cli.errors import BadInput
    from kadapter_cli.modeling.adapter import load_adapter


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'kadapter' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
