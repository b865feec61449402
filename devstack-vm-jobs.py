#!/usr/bin/env python3
"""Thin entry point, as an operator runs it: python3 devstack-vm-jobs.py --config PATH ..."""
import sys

from devstackgate.cmd.jobs import main

if __name__ == '__main__':
    sys.exit(main())
