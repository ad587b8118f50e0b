"""Local stand-ins for the push vendors.

Each one speaks its vendor's real protocol over a real socket (HTTP/1.1 for Web
Push and FCM, HTTP/2 over TLS for APNs) so that tests, benchmarks and the demo
exercise pushq's real delivery code without reaching the internet.
"""
