import pytest

from tests.conftest import digits  # noqa: F401  (shared fixture)
