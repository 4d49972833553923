"""HTTP middleware benchmark: tollway's ASGI middleware against bare Starlette and slowapi.

``python -m bench.http.run [--quick] [--rounds N] [--duration S]``; see ``bench/README.md``.
"""
