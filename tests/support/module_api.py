"""A stand-in for Synapse's ModuleApi, as strict as the real one where it matters."""

from __future__ import annotations

import inspect
from typing import Any, Callable


class FakeModuleApi:
    """register_spam_checker_callbacks takes exactly `keywords` and nothing else.

    Like the real one in every release, it has no **kwargs: an unknown name raises TypeError,
    which in a real Synapse kills startup.
    """

    worker_name = None

    def __init__(self, keywords: tuple[str, ...], keyword_only: bool = True) -> None:
        self.registered: dict[str, Callable[..., Any]] = {}
        star = "*, " if keyword_only else ""
        params = ", ".join(f"{k}=None" for k in keywords)
        namespace: dict[str, Any] = {}
        exec(f"def register({star}{params}):\n    return locals()", namespace)
        inner = namespace["register"]

        def register(**kwargs: Any) -> None:
            self.registered.update({k: v for k, v in inner(**kwargs).items() if v is not None})

        register.__signature__ = inspect.signature(inner)  # type: ignore[attr-defined]
        self.register_spam_checker_callbacks = register
