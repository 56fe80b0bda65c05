"""Helpers shared by the test tiers (importable as ``helpers.*`` once tests/ is on sys.path)."""
