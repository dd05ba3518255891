"""gunicorn settings for production, and for the benchmarks that measure it.

    gunicorn -c gunicorn.conf.py -b 0.0.0.0:8000 wsgi:app

Command-line options win over this file (`-w 4`, `--threads 16`, `-b ...`), and `GUNICORN_CMD_ARGS` works as
usual. Why each value is what it is, with the figures it was chosen by: docs/ARCHITECTURE.md, "Serving".
"""

from __future__ import annotations

import os

# Threads in a few processes: a request waits on PostgreSQL (a durable commit) most of its time, and a thread
# waiting there holds no CPU. One process per core by default (WEB_CONCURRENCY overrides), eight threads each.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", 0)) or (os.cpu_count() or 1)
threads = 8

# One listening socket per worker (SO_REUSEPORT): the kernel spreads new connections over the workers evenly by
# their address hash. Without it every worker waits on one shared socket, whichever wakes first accepts, and a
# switch's kept-alive connections, opened together, pile up on one worker (12 of 12 were seen on one of two).
reuse_port = True

# A switch keeps its connections open (Kamailio's http_client one per SIP worker; an SBC a pool) and may be
# quiet for a while between calls at night. Keep an idle connection longer than a switch or a load balancer
# waits before reusing it (nginx and most balancers: 60 s), so that the server is never the one closing a
# connection the client is about to send on. An idle kept-alive connection costs a socket, not a thread.
keepalive = 75
worker_connections = 1000

# A request that runs longer than this is a stuck worker: it is killed and replaced. The switch API answers in
# milliseconds; the slowest request the service serves is a CDR batch of 10,000 items (a few seconds).
timeout = 30
graceful_timeout = 30
backlog = 2048

# The service writes its own access line per request (JSON, query strings left out, the switch API's lines
# naming the route, not the call id: credits.web.request_log), so gunicorn's is off. When it is turned on
# (`--access-logfile -`), it shows the path without its query string: links such as /pay?token=... carry a
# credential there.
accesslog = None
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
errorlog = "-"
loglevel = "info"

# gunicorn 25+ opens a control socket under ~/.gunicorn by default; the service does not use one.
control_socket_disable = True
