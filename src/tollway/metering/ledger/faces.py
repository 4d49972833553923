"""`described`: a method made from a flow or an operation shows that function's docstring and
signature (its first parameter, the dialect or the backend's shape, becomes ``self``), so
``help(ledger.totals)`` reads as if the method were written out."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["described"]

F = TypeVar("F", bound=Callable[..., Any])


def described(method: F, source: Callable[..., Any]) -> F:
    signature = inspect.signature(source)
    rest = list(signature.parameters.values())[1:]
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    returns = signature.return_annotation  # "Op[T]" or "Flow[T]": the method returns T
    if isinstance(returns, str) and returns.endswith("]") and "[" in returns:
        returns = returns[returns.index("[") + 1 : -1]
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *rest], return_annotation=returns
    )
    method.__doc__ = source.__doc__
    return method
