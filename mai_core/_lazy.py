"""Lazy package faces (PEP 562): a wing's ``__init__`` names what it offers, submodules load on first use.

Importing a wing stays cheap (``python -m mai_core --help`` never pulls in torch), and a face never
creates an import cycle between the modules behind it.
"""

from __future__ import annotations

import importlib


def attach(package: str, exports: dict[str, tuple[str, ...]]):
    """``(__getattr__, __dir__, __all__)`` for ``package`` exporting ``{submodule: (names, ...)}``."""
    where = {name: sub for sub, names in exports.items() for name in names}
    if len(where) != sum(len(n) for n in exports.values()):
        raise ValueError(f"{package}: a name is exported by two submodules")
    all_names = sorted(where)

    def __getattr__(name: str):
        sub = where.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__():
        return all_names

    return __getattr__, __dir__, all_names
