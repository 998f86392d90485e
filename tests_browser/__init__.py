"""Browser tests of the notebook widgets (a package, so that its conftest does not shadow tests/conftest.py)."""
