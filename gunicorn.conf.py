"""gunicorn settings for vastpanel: `gunicorn -c gunicorn.conf.py app:app`.

Read from the environment (see docs/operations.md, "Production"):
    VASTPANEL_BIND         where to listen; 127.0.0.1:8000 by default, 0.0.0.0:8000 in the container
    VASTPANEL_WORKERS      worker processes (1); they share state through SQLite
    VASTPANEL_CONNECTIONS  connections one worker serves at once (1000), waiting ones included
    VASTPANEL_CONNECTIONS_PER_CLIENT  of those, what one client address may hold (100)
    VASTPANEL_BODY_TIMEOUT_S  how long a request body may keep the server waiting, in all (10)
    FORWARDED_ALLOW_IPS    the reverse proxies (also read by the app: vastpanel/addresses.py)

gevent workers: each connection is a greenlet, so a request that waits (a power-on waiting for
health, a client that sends its request slowly, a slow vast.ai answer) costs no thread and does
not hold up the others. gunicorn monkey-patches the worker before it loads the app; the
watchdog runs as greenlets of the same worker (vastpanel/watchdog/scheduler.py). The worker is
gunicorn's gevent worker with a bound on each client (vastpanel/serving.py).
"""

import glob
import os
import shutil
import tempfile

# Prometheus multiprocess mode: every worker writes its counters to files in one directory, and
# /metrics sums them. Set first, before anything imports prometheus_client (importing vastpanel
# does), which picks its mode at import; emptied at each start (old files would add a previous
# run's counts), a dead worker's gauges retired, and a directory made here removed at exit.
METRICS_DIR_GIVEN = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip())
METRICS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip() or tempfile.mkdtemp(
    prefix="vastpanel-metrics-"
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = METRICS_DIR

from vastpanel.config import Config, ConfigError  # noqa: E402 (after the metrics directory)
from vastpanel.logs import LOG_FORMAT  # noqa: E402

# A bad setting stops gunicorn's master at once, with the message naming it.
try:
    CONFIG = Config.from_env(os.environ)
except ConfigError as exc:
    raise SystemExit(f"vastpanel: configuration error: {exc}") from None


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"vastpanel: configuration error: {name} must be 1 or more, got {raw!r}")
    return int(raw)


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise SystemExit(
            f"vastpanel: configuration error: {name} must be a number of seconds above 0, "
            f"got {raw!r}"
        )
    return value


bind = [os.environ.get("VASTPANEL_BIND", "").strip() or "127.0.0.1:8000"]
worker_class = "vastpanel.serving.PanelWorker"  # gunicorn's gevent worker, bounded per client
workers = _count("VASTPANEL_WORKERS", 1)
# Idle keep-alive sockets, half-sent requests and power-ons waiting for health all count here;
# past it the worker stops accepting until one ends.
worker_connections = _count("VASTPANEL_CONNECTIONS", 1000)
# What one client address may hold of them, and how long its request body may keep a request
# waiting (vastpanel/serving.py), so that no client fills the worker; handed over in post_fork.
CONNECTIONS_PER_CLIENT = _count("VASTPANEL_CONNECTIONS_PER_CLIENT", 100)
BODY_TIMEOUT_S = _seconds("VASTPANEL_BODY_TIMEOUT_S", 10)
# The proxies whose X-Forwarded-Proto gunicorn believes are those whose X-Forwarded-For the app
# believes: one list, read once (the app reads the same variable; here its checked value).
forwarded_allow_ips = ",".join(CONFIG.forwarded_allow_ips)

# The worker heartbeats from its hub between greenlets, so a request that waits long (a power-on
# with wait_for_health, a stream) never trips `timeout`: only a worker whose hub is blocked
# (CPU-bound, or stuck in a call that does not yield) this long is killed and replaced, and its
# successor's watchdog looks at once. A blocked hub also stops the looks and the gateway's
# activity posts, so it must not last: a minute.
timeout = 60
graceful_timeout = 30
# Also how long a connection may take to send its request line and headers (gunicorn's async
# workers read them under this timeout), so a half-open socket is closed after 5 s.
keepalive = 5
# The heartbeat file on tmpfs: a container's overlay disk can stall it and trip the timeout.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# One line per request, without the query string (%(U)s is the path alone; %(r)s and %(q)s would
# show the query) and without the referer, which can hold another URL's query.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)ss'

# Every line on stderr, one format: UTC time, level, logger, message. The "vastpanel" logger
# gets its handler here, so create_app leaves logging as it is.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"class": "vastpanel.logs.UtcFormatter", "format": LOG_FORMAT},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "vastpanel": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
    },
}


def on_starting(server):
    """Empty the metrics directory, so counts start from zero with this run."""
    os.makedirs(METRICS_DIR, exist_ok=True)
    for path in glob.glob(os.path.join(METRICS_DIR, "*.db")):  # only prometheus_client's files
        os.remove(path)


def on_exit(server):
    """Remove the metrics directory this config made (a given one is only emptied at start)."""
    if not METRICS_DIR_GIVEN:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)


def post_fork(server, worker):
    """Give the new worker its bounds per client."""
    worker.connections_per_client = CONNECTIONS_PER_CLIENT
    worker.body_timeout_s = BODY_TIMEOUT_S


def child_exit(server, worker):
    """Retire an exited worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# No control socket: nothing here uses it, and it would want a writable $HOME (or
# XDG_RUNTIME_DIR) that the container's user does not have.
control_socket_disable = True
