"""Vendor wire clients: connections, HTTP/2, event loops and forks.

An adapter (``workers/adapters``) turns a delivery into a vendor request and the
vendor's answer into an outcome; the wire client under it owns how the request
travels. Kept apart so the adapter's rules read without transport detail, and
fixes to third-party libraries live in modules of their own, each with a test.
"""
