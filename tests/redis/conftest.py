"""RedisCache tests (README "RedisCache API"; ARCHITECTURE "RedisCache: the picture",
"Failure model"): the ``hostile`` fixture, a factory of fake Redis servers that
misbehave on purpose (tests/support/hostile.py), all closed after the test."""
from tests.support.hostile import hostile  # noqa: F401 (a fixture)
