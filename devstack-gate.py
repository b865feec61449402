#!/usr/bin/env python3
"""Thin entry point, as an operator or a Jenkins shell builder calls it: python3 devstack-gate.py"""
import sys

from devstackgate.cmd.operator import main

if __name__ == '__main__':
    sys.exit(main())
