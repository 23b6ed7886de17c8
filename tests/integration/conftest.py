from tests.integration.sandbox_fixtures import sandbox  # noqa: F401  (session fixture)
