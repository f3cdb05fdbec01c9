"""The installed version the packages report is the one the build writes (``shelfcast.__version__``)."""

import shelfcast
from forecasting.common.version import shelfcast_version


def test_installed_version_matches_the_build_version() -> None:
    """What the agent and the server report agrees with ``shelfcast --version``."""
    assert shelfcast_version() == shelfcast.__version__
