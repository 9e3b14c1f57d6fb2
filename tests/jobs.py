"""Helpers for tests that launch a job of separate processes."""

import socket


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (the coordinator's)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
