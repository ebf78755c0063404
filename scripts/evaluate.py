#!/usr/bin/env python3
"""Evaluate neighbour quality: a thin shim over `python -m similarity_api evaluate`."""

import sys

from similarity_api.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
