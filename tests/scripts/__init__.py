"""Programs the tests run in a fresh interpreter (a crash, a hang or interpreter exit is
what they check): ``tests.support.run_script(name, *args)`` runs ``python -X faulthandler
-m tests.scripts.<name> args...`` from the repository root."""
