"""Test tier: see tests/conftest.py (markers by directory)."""
