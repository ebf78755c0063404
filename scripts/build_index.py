#!/usr/bin/env python3
"""Build the similarity index: a thin shim over `python -m similarity_api build`."""

import sys

from similarity_api.build.cli import main

if __name__ == "__main__":
    sys.exit(main())
