"""Prometheus metrics for a gearshift server: a built-in plugin on the observer hooks.

::

    server = gearshift.make_server("", 8000, app, "threadpool")
    metrics = gearshift.metrics.enable(server, ("127.0.0.1", 9100))
    try:
        server.serve_forever()      # http://127.0.0.1:9100/metrics while it serves
    finally:
        server.server_close()
        metrics.close()

The ``gearshift`` command does the same for ``--metrics-bind HOST:PORT``. :func:`enable` binds
the metrics address at once (so that a taken port fails there, like the server's own bind) and
registers a :class:`Metrics` plugin (:func:`gearshift.register_plugin`); nothing is registered,
and nothing is paid on the request path, unless metrics are asked for. The plugin counts what
the observer hooks report for ``server`` only, and serves ``/metrics`` from a ``sync`` gearshift
server in a daemon thread, from ``gearshift_server_started`` to ``gearshift_server_stopping``,
in the process that runs ``serve_forever()`` (a ``prefork`` master, never its workers).

Exported: ``gearshift_requests_total{status_class, method}`` (method one of :data:`METHODS`,
else ``other``: a client cannot make the label set grow), ``gearshift_request_duration_seconds
{status_class}``, ``gearshift_connections_accepted_total``, ``gearshift_connections_open``,
and the strategy's load, :meth:`gearshift.Strategy.stats`, as gauges named in
:data:`STATS_GAUGES`, read when the endpoint is scraped.

Processes: a strategy with worker processes (``prefork``) counts in its workers, so the plugin
uses prometheus_client's multiprocess mode: each process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` and the endpoint adds them up. The directory must be named before
prometheus_client is imported, which :func:`enable` does (a private temporary directory,
removed by :meth:`Metrics.close`) unless the environment names one already. The counts of a
worker that exited stay (its files do); its gauges go (``mark_process_dead``). A worker's load
(``busy``, ``queued``, ``threads``) is written by a thread of that worker every
:data:`PUBLISH_EVERY` seconds, since no hook marks the start of a request; ``workers`` is the
master's and read at scrape time. A strategy with short-lived processes (``fork``: a process,
so a set of files, per connection) is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .core.errors import GearshiftError
from .core.hookspecs import hookimpl
from .core.plugins import register_plugin, unregister_plugin
from .core.strategy import STATS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

    from .core.server import Server
    from .http.accesslog import AccessRecord

log = logging.getLogger("gearshift")

INSTALL_HINT = "pip install 'gearshift[prometheus]'"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: The methods that get a label of their own; any other is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
#: The gauge each key of ``Strategy.stats()`` is exported as.
STATS_GAUGES = {
    "busy": "gearshift_handlers_busy",
    "queued": "gearshift_queue_depth",
    "threads": "gearshift_threads",
    "workers": "gearshift_workers",
}
#: Seconds between two writes of a worker process's load to its multiprocess files.
PUBLISH_EVERY = 1.0

_STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


class MetricsError(GearshiftError, RuntimeError):
    """Metrics cannot be served: prometheus_client is missing, or cannot be put in the mode the
    server's strategy needs. The message says what to do."""


def enable(server: Server, address: tuple[str, int]) -> Metrics:
    """Export ``server``'s metrics for Prometheus at ``http://HOST:PORT/metrics``; call it
    before ``server.serve_forever()``. Returns the plugin: its :meth:`~Metrics.close` (after
    ``server.server_close()``) unregisters it and removes what it made.

    Raises :class:`MetricsError` (prometheus_client missing, or imported already in a mode
    that cannot count across worker processes), ``ValueError`` (a strategy metrics cannot
    follow) or ``OSError`` (the address cannot be bound)."""
    metrics = Metrics(server, address)
    try:
        register_plugin(metrics, name=f"gearshift.metrics {metrics.url}")
    except BaseException:
        metrics.close()
        raise
    metrics._registered = True
    return metrics


class Metrics:
    """The metrics plugin of one server (see the module docstring); made by :func:`enable`."""

    def __init__(self, server: Server, address: tuple[str, int]) -> None:
        strategy = server.strategy
        if strategy.multiprocess and not strategy.worker_processes:
            raise ValueError(
                f"metrics cannot follow strategy {strategy.name!r}: it serves in short-lived processes, each of "
                f"which would leave its own metrics files; use a strategy that serves in this process (threadpool, "
                f"thread, sync) or in long-lived worker processes (prefork)"
            )
        self.server = server
        self._registered = False
        self._lock = threading.Lock()
        self._home_pid: int | None = None  # the process serve_forever() runs in, once it does
        self._made_dir: str | None = None
        self._dir: str | None = None
        if strategy.worker_processes:
            self._prepare_multiprocess_dir()
        try:
            self._build(address)
        except BaseException:
            self._remove_dir()
            raise
        _watch_forks(self)

    @property
    def server_address(self) -> tuple[str, int]:
        """The address ``/metrics`` is served on (the real port, when 0 was asked for)."""
        return self._address

    @property
    def url(self) -> str:
        host, port = self._address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    # -- setting up ------------------------------------------------------------------------------

    def _prepare_multiprocess_dir(self) -> None:
        """Name the directory of prometheus_client's multiprocess files, unless the environment
        does: before prometheus_client is imported, which is when it reads the variable."""
        named = os.environ.get(MULTIPROC_DIR)
        if named:
            if not os.path.isdir(named):
                raise MetricsError(f"{MULTIPROC_DIR}={named!r} is not a directory: create it (empty) or unset it")
            self._dir = named
            return
        import sys

        if "prometheus_client" in sys.modules:
            return  # too late to choose the mode: _build() says so
        self._made_dir = self._dir = tempfile.mkdtemp(prefix="gearshift-metrics-")
        os.environ[MULTIPROC_DIR] = self._made_dir

    def _build(self, address: tuple[str, int]) -> None:
        try:
            import prometheus_client
            from prometheus_client import values
        except ImportError as exc:
            raise MetricsError(f"metrics need prometheus_client, which cannot be imported ({exc}): "
                               f"{INSTALL_HINT}") from None
        #: Are values kept in files shared by processes (prometheus_client's multiprocess mode)?
        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
        if self.server.strategy.worker_processes and not self.multiprocess:
            raise MetricsError(
                f"strategy {self.server.strategy.name!r} counts in worker processes, which needs prometheus_client's "
                f"multiprocess mode, but prometheus_client was imported before it could be chosen: set "
                f"{MULTIPROC_DIR} to an empty directory before starting"
            )
        if self.multiprocess and self._dir is None:
            self._dir = os.environ[MULTIPROC_DIR]
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._registry: CollectorRegistry = CollectorRegistry()
        # In multiprocess mode the values are read back from the files, not from these objects.
        own = None if self.multiprocess else self._registry
        self._requests = Counter("gearshift_requests", "HTTP requests answered, by status class and method",
                                 ("status_class", "method"), registry=own)
        self._durations = Histogram("gearshift_request_duration_seconds",
                                    "Seconds spent on a request, as the access log's duration, by status class",
                                    ("status_class",), registry=own)
        self._accepted = Counter("gearshift_connections_accepted", "Connections accepted", registry=own)
        self._open = Gauge("gearshift_connections_open", "Connections accepted and not closed yet",
                           registry=own, multiprocess_mode="livesum")
        # Each (status class, method label) pair's two series, made on first use.
        self._series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        if self.multiprocess:
            assert self._dir is not None
            self._registry.register(_ProcessFiles(self._dir))
        self._registry.register(_StrategyLoad(self.server))
        self._generate = prometheus_client.generate_latest
        self._content_type = prometheus_client.CONTENT_TYPE_LATEST

        from .http.server import make_server  # the HTTP layer imports the core, as this does

        self._endpoint: Server | None = make_server(address[0], address[1], self._serve_scrape, "sync")
        self._address: tuple[str, int] = self._endpoint.server_address[:2]
        self._thread: threading.Thread | None = None

    # -- the observer hooks --------------------------------------------------------------------

    @hookimpl
    def gearshift_server_started(self, server: Server) -> None:
        if server is not self.server:
            return
        self._home_pid = os.getpid()
        with self._lock:
            endpoint = self._endpoint
            if endpoint is None or self._thread is not None:
                return
            self._thread = threading.Thread(target=endpoint.serve_forever, name="gearshift-metrics", daemon=True)
            self._thread.start()
        log.info("serving metrics on %s", self.url)

    @hookimpl
    def gearshift_server_stopping(self, server: Server) -> None:
        if server is self.server:
            self._stop_endpoint()

    @hookimpl
    def gearshift_connection_accepted(self, server: Server) -> None:
        if server is self.server:
            self._accepted.inc()
            self._open.inc()

    @hookimpl
    def gearshift_connection_closed(self, server: Server) -> None:
        if server is self.server:
            self._open.dec()

    @hookimpl
    def gearshift_request_finished(self, server: Server, record: AccessRecord) -> None:
        if server is not self.server:
            return
        status = record.status
        status_class = _STATUS_CLASSES[status // 100] if 100 <= status < 600 else "other"
        method = record.method()
        key = (status_class, method if method in METHODS else "other")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (self._requests.labels(*key), self._durations.labels(status_class))
        series[0].inc()
        series[1].observe(record.duration)

    @hookimpl
    def gearshift_worker_exited(self, server: Server, pid: int) -> None:
        if server is self.server and self._dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._dir)  # type: ignore[no-untyped-call]  # gauges go, counts stay

    # -- the endpoint --------------------------------------------------------------------------

    def _serve_scrape(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            body = b"not found: the metrics are at /metrics\n"
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                              ("Content-Length", str(len(body)))])
            return [body]
        body = self._generate(self._registry)
        start_response("200 OK", [("Content-Type", self._content_type), ("Content-Length", str(len(body)))])
        return [body]

    def _stop_endpoint(self) -> None:
        with self._lock:
            endpoint, thread = self._endpoint, self._thread
            self._endpoint = self._thread = None
        if endpoint is None:
            return
        if thread is not None:
            endpoint.shutdown()  # a scrape in progress is answered first
            thread.join()
        endpoint.server_close()

    def close(self) -> None:
        """Stop serving ``/metrics`` if it still is, unregister the plugin, and remove the
        multiprocess directory :func:`enable` made. Call it after ``server.server_close()``:
        the workers of a ``prefork`` server write to that directory until they have exited."""
        self._stop_endpoint()
        if self._registered:
            self._registered = False
            unregister_plugin(self)
        _FORK_WATCHED.discard(self)
        self._remove_dir()

    def _remove_dir(self) -> None:
        made, self._made_dir = self._made_dir, None
        if made is None:
            return
        shutil.rmtree(made, ignore_errors=True)
        if os.environ.get(MULTIPROC_DIR) == made:
            del os.environ[MULTIPROC_DIR]

    # -- forked processes ----------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """A forked process does not serve ``/metrics``: it closes its copies of the endpoint's
        listener and loop (``Server.after_fork``), so that the port is free once the parent
        closes it. A direct child of the serving process (a ``prefork`` worker) publishes its
        strategy's load to its multiprocess files."""
        self._made_dir = None  # the parent's to remove
        self._thread = None  # threads do not survive a fork
        self._lock = threading.Lock()
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.after_fork()
        if self.multiprocess and self._home_pid is not None and os.getppid() == self._home_pid:
            publisher = _LoadPublisher(self.server)
            threading.Thread(target=publisher.run, name="gearshift-metrics-load", daemon=True).start()


class _LoadPublisher:
    """A worker's strategy load, written every :data:`PUBLISH_EVERY` seconds to gauges the
    endpoint sums over the live workers: all keys but ``workers``, which is the master's.
    Nothing is written by a child that is not a worker (its strategy reports only
    ``workers``)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._gauges: dict[str, Gauge] = {}

    def publish(self) -> None:
        from prometheus_client import Gauge

        for key, value in self.server.strategy.stats().items():
            if key not in STATS_GAUGES or key == "workers":
                continue
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = self._gauges[key] = Gauge(STATS_GAUGES[key], STATS[key].capitalize(), registry=None,
                                                  multiprocess_mode="livesum")
            gauge.set(value)

    def run(self) -> None:
        try:
            while True:
                self.publish()
                time.sleep(PUBLISH_EVERY)
        except Exception:
            log.exception("metrics: cannot publish the load of worker %d; its gauges stop here", os.getpid())


class _ProcessFiles:
    """prometheus_client's ``MultiProcessCollector``, except for the files no process has
    written yet: a process creates its file empty and sizes it an instant later, and reading it
    in between raises ``struct.error``, which would answer that scrape 500."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.endswith(".db") and _size(path):
                files.append(path)
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # removed since it was listed: a dead process's gauges
        return 0


class _StrategyLoad:
    """The collector of ``server.strategy.stats()``, read at scrape time: the keys of
    :data:`STATS_GAUGES` the strategy reports, in the scraped process (a ``prefork`` master:
    ``workers``; its workers publish the rest themselves)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        for key, value in self.server.strategy.stats().items():
            name = STATS_GAUGES.get(key)
            if name is not None:
                yield GaugeMetricFamily(name, STATS[key].capitalize(), value=value)


_FORK_WATCHED: weakref.WeakSet[Metrics] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_registered = False


def _watch_forks(metrics: Metrics) -> None:
    """Have ``metrics`` told of every fork (``os.register_at_fork``, once for the module)."""
    global _fork_hook_registered
    with _fork_hook_lock:
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_registered = True
        _FORK_WATCHED.add(metrics)


def _after_fork_in_child() -> None:
    for metrics in list(_FORK_WATCHED):
        metrics._after_fork_in_child()
