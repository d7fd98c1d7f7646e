import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import gobuild  # noqa: E402


@pytest.fixture(scope="session")
def go_build():
    """go_build("name") -> Path of the built binary of tests/goprogs/name."""
    return gobuild.build
