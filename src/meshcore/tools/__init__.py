"""Operator tools: the library behind ``meshcore analyze``, ``meshcore x explain`` and
``meshcore proxy-config`` (each command is a thin layer over a function here)."""
