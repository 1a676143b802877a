"""Property-based fuzzing of what hostile input reaches first: the parsers (scope, Basic,
urlencoded), the notification envelope through the ASGI app, and the policy loader.

`pytest` runs each target with a few hundred generated inputs; `make fuzz` runs them with
FUZZ_EXAMPLES each (100,000 by default). See `tests/fuzz/profiles.py`.
"""
