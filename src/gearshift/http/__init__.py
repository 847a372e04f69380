"""HTTP/1.1 and WSGI on top of the core: parsing (httptools), connections, environ, responses."""

from .connection import WSGIRequestHandler
from .server import HTTPConfig, WSGIServer, make_server

__all__ = ["HTTPConfig", "WSGIRequestHandler", "WSGIServer", "make_server"]
