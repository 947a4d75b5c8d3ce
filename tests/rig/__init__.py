"""Test rig: real PostgreSQL, SeaweedFS (S3) and Barman processes on loopback, on free ports.

Why real services: the product's promise is that Barman can list and restore what it writes, so
the only convincing check is to run Barman's own restore against a real S3 server and replay WAL
into a real PostgreSQL. Everything here starts in a few seconds and cleans up after itself
(fixtures stop what they start; an ``atexit`` hook catches what a crashed test leaves behind).
"""

from __future__ import annotations
