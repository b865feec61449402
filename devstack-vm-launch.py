#!/usr/bin/env python3
"""Thin entry point, as a Jenkins shell builder calls it: python3 devstack-vm-launch.py ..."""
import sys

from devstackgate.cmd.launch import main

if __name__ == '__main__':
    sys.exit(main())
