"""``--app``: load the ``Server`` a user's module defines, as uvicorn loads an app string.

``path/to/app.py:server`` loads a file (its folder goes first on ``sys.path``, so it can import
its neighbours); ``package.module:server`` imports a module (the working directory goes first on
``sys.path``). The attribute defaults to ``server``, may be dotted, and may be a function that
returns the ``Server`` (a factory). The command line's settings then replace the ones the module
built its server with (``Server.configure``), so every flag applies to it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from datapulse.server import Server


class AppLoadError(Exception):
    """The app string names nothing that loads as a ``Server``; the message says why."""


def load_app(spec: str) -> Server:
    target, colon, attribute = spec.rpartition(":")
    if not colon:
        target, attribute = spec, "server"
    if not target or not attribute:
        raise AppLoadError(f"{spec!r} is not 'path/to/app.py:attribute' or 'module:attribute'")
    module = _load_module(target)
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise AppLoadError(f"{target} has no attribute {attribute!r}") from None
    if not isinstance(value, Server) and callable(value):
        value = value()  # a factory
    if not isinstance(value, Server):
        raise AppLoadError(f"{spec} is a {type(value).__name__}, not a datapulse Server")
    return value


def _load_module(target: str) -> ModuleType:
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise AppLoadError(f"no such file: {target}")
        sys.path.insert(0, str(path.parent))
        name = path.stem
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise AppLoadError(f"{target} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look a module up by name
        loader_spec.loader.exec_module(module)
        return module
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and target.startswith(exc.name):
            raise AppLoadError(f"no module named {exc.name!r}") from None
        raise  # a module the app itself imports is missing: its own traceback says where
