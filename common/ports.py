"""Free TCP ports (no torch import, so launchers and test daemons can use it cheaply)."""
import socket

__all__ = ["free_port"]


def free_port(host="127.0.0.1"):
    """A TCP port that is free on ``host`` right now (for MASTER_PORT and test daemons)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
