"""Programs the tests run in a fresh interpreter (a crash, a hang or interpreter exit is
what they check): ``tests.support.run_script(name, *args)`` runs ``python -X faulthandler
-m tests.scripts.<name> args...`` from the repository root."""
import json as _json
import os as _os


def server_kwargs() -> dict:
    """What a script's RedisCache needs for the test server's transport besides host and
    port (``run_script(..., server=...)`` passes the server's ``tls_kwargs``: ``{}`` for
    plaintext, ssl=True and the CA for TLS)."""
    return _json.loads(_os.environ.get("BRUNO_TEST_SERVER_KWARGS", "{}"))
