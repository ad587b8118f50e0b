"""Helpers shared by the test tiers: key pairs, deliveries, stand-in fixtures."""
