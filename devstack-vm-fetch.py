#!/usr/bin/env python3
"""Thin entry point, as a Jenkins shell builder calls it: python3 devstack-vm-fetch.py ..."""
import sys

from devstackgate.cmd.fetch import main

if __name__ == '__main__':
    sys.exit(main())
