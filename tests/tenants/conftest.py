import pytest


@pytest.fixture
def roomy_token_limits(settings):
    """For token-endpoint tests about answers, not throttling (see test_token_rate_limit.py)."""
    settings.TOKEN_RATE_LIMIT_PER_IP = "100000/m"
    settings.TOKEN_RATE_LIMIT_PER_CLIENT = "100000/m"
