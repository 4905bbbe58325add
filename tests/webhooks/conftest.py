"""The webhook tests use the service tests' example CT and node fixtures."""

from tests.service.conftest import ct_sources  # noqa: F401 - shared fixture
