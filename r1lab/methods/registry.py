"""The registry of methods: one name, one ``Method`` object, read by the engine, the CLI,
sweeps and notebooks alike.

    @register                         a class attribute ``name`` is its key
    class MyMethod(DAC): name = "my-method"; ...

    get_method("dac")                 the registered object
    names()                           every registered name, in registration order
"""
from __future__ import annotations

from typing import Dict, List, Type

from r1lab.errors import ConfigError
from r1lab.methods.base import Method

_REGISTRY: Dict[str, Method] = {}


def register(cls: Type[Method]) -> Type[Method]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name to be registered")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice "
                         f"({type(_REGISTRY[cls.name]).__name__} and {cls.__name__})")
    _REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The method registered as ``name``; ``ConfigError`` naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose from {tuple(_REGISTRY)}") from None


def names() -> List[str]:
    return list(_REGISTRY)
