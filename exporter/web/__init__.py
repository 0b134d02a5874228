"""Package web is the exporter's HTTP side: the serving process's one event loop, the
telemetry path, the landing page, health and readiness, and the exporter-toolkit web config
(TLS, basic auth, headers, rate limit). Import its modules directly; this file imports none
of them, so loading one (e.g. ``reload`` loading ``webconfig``) never loads the server.

The generic server, which knows nothing of the exporter (no metrics, store or config):

* ``server``     HTTPServer: listening, the connection cap sized to the open-files limit, the
                 idle connection that gives way at the cap, one sweep for every deadline;
                 it hands each request to a handler callable.
* ``connection`` one client connection: h11 parsing, head and body limits, deadlines,
                 pipelining turns, lingering after an error answer; ``Request``.
* ``sending``    answers at once by writev and sendfile, else in pieces as the client reads,
                 with a bound on the answers under way.
* ``common``     status reasons and log thinning they share.

The exporter's app on top of it:

* ``app``        WebApp and its handler: routes, the auth policy, POST /-/reload (with the
                 cross-site refusal), the rate limit, the landing page's cache; ``serve``.
* ``landing``    the landing page "/", rendered from a small ``LandingView``.

The web config (``--web.config.file``):

* ``schema``     the file's pydantic schema; each error names its field.
* ``webconfig``  loading: the YAML file and the PEM files it names; ``WebConfig``.
* ``tls``        the server SSLContext from PEM texts; the client_allowed_sans check.
* ``basicauth``  bcrypt checks: the dummy hash, cached successes, the pending-check bounds.
"""
