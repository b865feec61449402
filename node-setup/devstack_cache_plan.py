#!/usr/bin/env python3
"""What a devstack template node must cache, and the commands that cache it.

This file runs ON the template VM, where the devstack-gate package is not
installed: it needs python3 (3.8 or later) and its standard library, plus git
to read branches.  prepare-node.sh, beside it, calls it and runs the commands
it emits.  It is the one source of truth for the plan logic; its tests load
this very file.

The plan, for a devstack checkout, a distribution codename, a list of branches
and a list of projects (name and git URL or local path):

- debs: every package named in devstack's ``files/debs/*`` at each branch,
  sorted and unique.  A line is ``PACKAGE [# comment]``.  Markers in the
  comment: ``dist:D1,D2`` keeps the package only on those distributions (exact
  codenames, case-insensitive); ``not:D1,D2`` drops it on those; ``testonly``
  keeps it unless ``include_testonly`` is false (the gate runs the tests, so
  the default caches them).  Other comment text, ``NOPRIME`` included, is
  ignored: packages devstack installs later are worth caching too.
- images: the URLs devstack downloads, from every ``IMAGE_URLS`` assignment in
  ``stackrc`` (every case branch: all of them are cached), with ``$VAR``,
  ``${VAR}`` and ``${VAR:-default}`` expanded from stackrc's own assignments
  and the ``variables`` overrides (the local.conf of this plan), and
  ``$(uname -m)`` from ``machine``.  ``file://`` URLs are used in place by
  devstack and need no download.
- pip: each project's ``requirements.txt`` and ``test-requirements.txt`` at
  each branch (comments and blank lines dropped, ``-r FILE`` followed, ``-e``,
  other options and local paths skipped with a note), and
  ``global-requirements.txt`` of the project that has one (openstack
  requirements); its ``upper-constraints.txt`` constrains the downloads so
  that the cached versions are the ones devstack installs.
- git: one clone per project in the git cache, updated by fetch when it
  exists, with a local branch for every configured branch the project has;
  the first such branch is checked out.

Project contents are read from the clone in the git cache when it exists
(``origin/BRANCH``), else from the local source (``BRANCH``); a project known
only by URL is read after prepare-node.sh has cloned it (the ``cache`` phase).

Usage: ``devstack_cache_plan.py {plan,commands} [options]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import json
import os
import platform
import pwd
import re
import shlex
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = [
    'PlanError', 'Project', 'ProjectRequirements', 'ProjectFile', 'BranchPlan', 'Plan',
    'Command', 'STEPS', 'PHASES', 'DirectoryTree', 'GitTree',
    'parse_debs', 'parse_stackrc_images', 'parse_requirements', 'parse_project',
    'parse_projects_file', 'compute_plan', 'tool_commands', 'fetch_commands',
    'cache_commands', 'render_commands', 'records', 'main',
]

STEPS = ('apt', 'git', 'pip', 'images')
PHASES = ('tools', 'fetch', 'cache')
DEBS_DIR = 'files/debs'
STACKRC = 'stackrc'
REQUIREMENT_FILES = ('requirements.txt', 'test-requirements.txt')
GLOBAL_REQUIREMENTS = 'global-requirements.txt'
UPPER_CONSTRAINTS = 'upper-constraints.txt'
# The download tools each step needs; nothing else is ever installed.
STEP_TOOLS = {'git': 'git', 'pip': 'python3-pip', 'images': 'curl'}


class PlanError(Exception):
    """A missing or malformed devstack tree, project or option: one line naming the file.

    Shaped like devstackgate.errors.GateError (reason, exit_code, lines) without
    importing it: this file must stay standalone.
    """
    reason = 'devstack-tree'
    exit_code = 2

    def lines(self):
        return [str(self)]


# ---------------------------------------------------------------- trees

def _git(repo, *args):
    """Run git in repo, ignoring GIT_DIR and friends of the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('GIT_')}
    try:
        return subprocess.run(['git', '-C', repo] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, check=False)
    except FileNotFoundError:
        raise PlanError('git is not installed: it is needed to read the branches of %s'
                        % repo) from None


def is_git_checkout(path):
    return os.path.exists(os.path.join(path, '.git'))


def resolve_branch(repo, branch, prefixes):
    """The first of PREFIX+branch that names a commit in repo, shortened; None if none."""
    for prefix in prefixes:
        ref = prefix + branch
        if _git(repo, 'rev-parse', '--verify', '--quiet', ref + '^{commit}').returncode == 0:
            return ref[len('refs/remotes/'):] if ref.startswith('refs/remotes/') else \
                ref[len('refs/heads/'):]
    return None


class DirectoryTree:
    """The files of a plain directory (one branch: whatever is there)."""

    def __init__(self, root):
        self.root = root
        self.ref = None

    def where(self, relpath):
        return os.path.join(self.root, relpath)

    def read(self, relpath):
        try:
            with open(self.where(relpath), encoding='utf-8', errors='replace') as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def listdir(self, relpath):
        """Names of the regular files in relpath, sorted; None if it is not a directory."""
        try:
            entries = list(os.scandir(self.where(relpath)))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return sorted(e.name for e in entries if e.is_file())


class GitTree:
    """The files of one commit of a git repository, read without checking it out."""

    def __init__(self, root, ref):
        self.root = root
        self.ref = ref

    def where(self, relpath):
        return '%s@%s' % (os.path.join(self.root, relpath), self.ref)

    def read(self, relpath):
        proc = _git(self.root, 'cat-file', 'blob', '%s:%s' % (self.ref, relpath))
        if proc.returncode != 0:
            return None
        return proc.stdout.decode('utf-8', errors='replace')

    def listdir(self, relpath):
        proc = _git(self.root, 'ls-tree', '-z', self.ref, '--', relpath.rstrip('/') + '/')
        if proc.returncode != 0:
            return None
        names = []
        for entry in proc.stdout.decode('utf-8', errors='replace').split('\0'):
            if not entry:
                continue
            meta, _, path = entry.partition('\t')
            mode, kind = meta.split()[:2]
            if kind == 'blob' and mode != '120000':
                names.append(path.rsplit('/', 1)[-1])
        return sorted(names) if names else None


# ---------------------------------------------------------------- debs

PACKAGE_RE = re.compile(r'^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$')
DIST_RE = re.compile(r'\bdist:(\S*)')
NOT_RE = re.compile(r'\bnot:(\S+)')
TESTONLY_RE = re.compile(r'\btestonly\b')


def parse_debs(text, where, distro, include_testonly=True):
    """The packages of one files/debs file wanted on distro, in file order."""
    distro = distro.lower()
    packages = []
    for lineno, line in enumerate(text.splitlines(), 1):
        package, _, comment = line.partition('#')
        package = package.strip()
        if not package:
            continue
        if not PACKAGE_RE.match(package):
            raise PlanError('%s:%d: %r is not a Debian package name' % (where, lineno, package))
        wanted = True
        for value in DIST_RE.findall(comment):
            names = [n for n in value.lower().split(',') if n]
            if not names:
                raise PlanError('%s:%d: "dist:" names no distribution' % (where, lineno))
            wanted = wanted and distro in names
        for value in NOT_RE.findall(comment):
            wanted = wanted and distro not in value.lower().split(',')
        if TESTONLY_RE.search(comment) and not include_testonly:
            wanted = False
        if wanted:
            packages.append(package)
    return packages


# ---------------------------------------------------------------- stackrc

NAME = r'[A-Za-z_][A-Za-z0-9_]*'
ASSIGNMENT_RE = re.compile(r'^\s*(?:(?:export|local|readonly|declare(?:\s+-\w+)*)\s+)?'
                           r'(%s)(\+?=)' % NAME)
URL_RE = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://\S+$')


class Unknown:
    """A value stackrc computes at run time that this parser cannot."""

    def __init__(self, expr, var=None, unset=False):
        self.expr = expr    # what could not be evaluated: '${FOO}', '$(cmd)', '${X:+y}'
        self.var = var      # the variable to set with --var, when there is one
        self.unset = unset  # expr is a variable stackrc never sets

    def named(self, var):
        """The same unknown, as the value of variable var."""
        return self if self.var else Unknown(self.expr, var, self.unset)

    def detail(self):
        if self.unset:
            return '%s is not set in stackrc (pass --var %s=VALUE)' % (self.expr, self.var)
        if self.var:
            return '%s comes from %s (pass --var %s=VALUE)' % (self.var, self.expr, self.var)
        return '%s cannot be evaluated here' % self.expr


class _Unterminated(Exception):
    pass


class _Word:
    """Expand one shell word: quotes, $NAME, ${NAME}, ${NAME:-word}, $(uname -m)."""

    def __init__(self, text, lookup, default_of, machine):
        self.text = text
        self.pos = 0
        self.lookup = lookup          # name -> str | Unknown
        self.default_of = default_of  # (name, default str | Unknown) -> str | Unknown
        self.machine = machine
        self.unknown = None

    def _value(self, value):
        if isinstance(value, Unknown):
            self.unknown = self.unknown or value
            return ''
        return value

    def parse(self, stops=' \t;&|'):
        out = []
        text = self.text
        while self.pos < len(text) and text[self.pos] not in stops:
            c = text[self.pos]
            if c == '\\':
                out.append(text[self.pos + 1:self.pos + 2])
                self.pos += 2
            elif c == "'":
                end = text.find("'", self.pos + 1)
                if end < 0:
                    raise _Unterminated()
                out.append(text[self.pos + 1:end])
                self.pos = end + 1
            elif c == '"':
                self.pos += 1
                out.append(self._double_quoted())
            elif c in '$`':
                out.append(self._dollar())
            else:
                out.append(c)
                self.pos += 1
        return ''.join(out)

    def _double_quoted(self):
        out = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise _Unterminated()
            c = text[self.pos]
            if c == '"':
                self.pos += 1
                return ''.join(out)
            if c == '\\' and text[self.pos + 1:self.pos + 2] in ('$', '`', '"', '\\'):
                out.append(text[self.pos + 1])
                self.pos += 2
            elif c in '$`':
                out.append(self._dollar())
            else:
                out.append(c)
                self.pos += 1

    def _command(self, command):
        if command.strip() == 'uname -m' and self.machine:
            return self.machine
        return self._value(Unknown('$(%s)' % command.strip()))

    def _dollar(self):
        text = self.text
        if text[self.pos] == '`':
            end = text.find('`', self.pos + 1)
            if end < 0:
                raise _Unterminated()
            command = text[self.pos + 1:end]
            self.pos = end + 1
            return self._command(command)
        nxt = text[self.pos + 1:self.pos + 2]
        if nxt == '(':
            depth, i = 0, self.pos + 1
            while i < len(text):
                depth += {'(': 1, ')': -1}.get(text[i], 0)
                if depth == 0:
                    break
                i += 1
            else:
                raise _Unterminated()
            command = text[self.pos + 2:i]
            self.pos = i + 1
            return self._command(command)
        if nxt == '{':
            m = re.compile(NAME).match(text, self.pos + 2)
            if not m:
                raise _Unterminated()
            name = m.group(0)
            self.pos = m.end()
            op = re.compile(r':?[-=]|').match(text, self.pos).group(0)
            self.pos += len(op)
            if op:
                saved, self.unknown = self.unknown, None
                default = self.parse(stops='}')
                default_value = self.unknown or default
                self.unknown = saved
                value = self.default_of(name, default_value)
            elif text[self.pos:self.pos + 1] != '}':
                # ${#X}, ${X:+y}, ${X/a/b}...: not something a URL list needs.
                start = self.pos - len(name) - 2
                end = text.find('}', self.pos)
                if end < 0:
                    raise _Unterminated()
                self.pos = end
                value = Unknown(text[start:end + 1])
            else:
                value = self.lookup(name)
            if text[self.pos:self.pos + 1] != '}':
                raise _Unterminated()
            self.pos += 1
            return self._value(value)
        m = re.compile(NAME).match(text, self.pos + 1)
        if m:
            self.pos = m.end()
            return self._value(self.lookup(m.group(0)))
        self.pos += 1
        return '$'


def parse_stackrc_images(text, where, variables=None, machine=None):
    """The image URLs of every IMAGE_URLS assignment in stackrc, in order, unique.

    Assignments are evaluated in file order.  ``${NAME:-default}`` gives the
    override from ``variables`` when there is one, else the value of an earlier
    plain assignment, else its default: stackrc's ``X=${X:-...}`` lines in
    different case branches are alternatives, and each one's images are cached.
    """
    overrides = dict(variables or {})
    env: Dict[str, object] = dict(overrides)
    self_defaulted = set()      # variables whose value came from X=${X:-...}
    urls: List[str] = []
    found = False

    def lookup(name):
        if name in env:
            return env[name]
        return Unknown('${%s}' % name, name, unset=True)

    def default_of(name, default):
        if overrides.get(name):
            return overrides[name]
        if name in env and name not in self_defaulted and env[name] != '':
            return env[name]
        return default

    for lineno, line in enumerate(text.splitlines(), 1):
        m = ASSIGNMENT_RE.match(line)
        if not m:
            continue
        name, op = m.group(1), m.group(2)
        rhs = line[m.end():]
        word = _Word(rhs, lookup, default_of, machine)
        try:
            value = word.parse()
        except _Unterminated:
            if name == 'IMAGE_URLS':
                raise PlanError('%s:%d: unterminated quote or expansion in IMAGE_URLS'
                                % (where, lineno)) from None
            env[name] = Unknown('an unparsable value on line %d' % lineno, name)
            continue
        if word.unknown is not None:
            if name == 'IMAGE_URLS':
                raise PlanError('%s:%d: cannot evaluate IMAGE_URLS: %s'
                                % (where, lineno, word.unknown.detail()))
            env[name] = word.unknown.named(name)
            continue
        if re.match(r'^"?\$\{%s:?-' % re.escape(name), rhs):
            self_defaulted.add(name)
        else:
            self_defaulted.discard(name)
        if op == '+=':
            previous = env.get(name, '')
            env[name] = previous if isinstance(previous, Unknown) else previous + value
        else:
            env[name] = value
        if name == 'IMAGE_URLS':
            found = True
            for url in re.split(r'\s*,\s*', value.strip()):
                if not url:
                    continue
                if not URL_RE.match(url):
                    raise PlanError('%s:%d: IMAGE_URLS entry %r is not a URL'
                                    % (where, lineno, url))
                if url not in urls:
                    urls.append(url)
    if not found:
        raise PlanError('%s: no IMAGE_URLS assignment (is this devstack\'s stackrc?)' % where)
    return urls


def image_file_name(url):
    """The file name devstack gives a downloaded image: the last part of the URL path."""
    return urllib.parse.urlsplit(url).path.rsplit('/', 1)[-1]


# ---------------------------------------------------------------- requirements

REQUIREMENT_RE = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*|[a-z][a-z0-9+.-]*://\S+)')
INCLUDE_RE = re.compile(r'^(?:-r|--requirement)(?:\s*=?\s*)(\S+)$')


def _logical_lines(text):
    """(lineno, line) with backslash continuations joined and # comments removed."""
    pending, start = '', None
    for lineno, line in enumerate(text.splitlines(), 1):
        if start is None:
            start = lineno
        if line.endswith('\\'):
            pending += line[:-1]
            continue
        line = re.sub(r'(^|\s)#.*$', '', pending + line).strip()
        pending, first, start = '', start, None
        if line:
            yield first, line
    if pending.strip():
        yield start, re.sub(r'(^|\s)#.*$', '', pending).strip()


def parse_requirements(text, where, include=None, _seen=None):
    """(requirement lines, notes) of one pip requirements file.

    ``include(target, where)`` returns (text, where) of the file that ``-r
    target`` in the file ``where`` names, or None when there is no such file.
    Editable (-e) lines, other options and local paths are skipped with a
    note: devstack installs the projects themselves from its own checkouts.
    """
    seen = set() if _seen is None else _seen
    seen.add(where)
    lines: List[str] = []
    notes: List[str] = []
    for lineno, line in _logical_lines(text):
        m = INCLUDE_RE.match(line)
        if m:
            target = m.group(1)
            found = include(target, where) if include else None
            if found is None:
                raise PlanError('%s:%d: -r %s: no such file' % (where, lineno, target))
            sub_text, sub_where = found
            if sub_where not in seen:
                sub_lines, sub_notes = parse_requirements(sub_text, sub_where, include, seen)
                lines += sub_lines
                notes += sub_notes
            continue
        if line.startswith(('-e', '--editable')):
            notes.append('%s:%d: skipped editable requirement %r' % (where, lineno, line))
        elif line.startswith('-'):
            notes.append('%s:%d: skipped option %r' % (where, lineno, line))
        elif line.startswith(('.', '/', '~', 'file:')):
            notes.append('%s:%d: skipped local path %r' % (where, lineno, line))
        elif REQUIREMENT_RE.match(line):
            lines.append(line)
        else:
            raise PlanError('%s:%d: %r is not a requirement' % (where, lineno, line))
    return lines, notes


def _read_requirements(tree, relpath):
    """(lines, notes) of relpath in tree, following -r relative to it; None if absent."""
    text = tree.read(relpath)
    if text is None:
        return None
    relpaths = {tree.where(relpath): relpath}

    def include(target, where):
        # -r is relative to the file that says it.
        path = os.path.normpath(os.path.join(os.path.dirname(relpaths[where]), target))
        sub = None if path.startswith('..') else tree.read(path)
        if sub is None:
            return None
        relpaths[tree.where(path)] = path
        return sub, tree.where(path)
    return parse_requirements(text, tree.where(relpath), include)


# ---------------------------------------------------------------- projects

PROJECT_NAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$')
SCP_URL_RE = re.compile(r'^[^/\s]+@[^/\s:]+:')


def is_url(source):
    return bool(re.match(r'^[A-Za-z][A-Za-z0-9+.-]*://', source) or SCP_URL_RE.match(source))


@dataclass(frozen=True)
class Project:
    """A project to clone: a name (its directory in the git cache) and a source."""
    name: str
    source: str   # a git URL, or an absolute path of a local git repository

    @property
    def local(self):
        return not is_url(self.source)


def parse_project(spec, base_dir='.', where='--project'):
    """A Project from 'NAME=SOURCE', 'NAME SOURCE' or 'SOURCE' (name from its last part)."""
    spec = spec.strip()
    m = re.match(r'^([A-Za-z0-9_][A-Za-z0-9_./-]*)(?:=|\s+)(\S.*)$', spec)
    if m and not is_url(spec.split()[0]):
        name, source = m.group(1), m.group(2).strip()
    elif spec and len(spec.split()) == 1:
        source = spec
        name = re.sub(r'\.git$', '', re.split(r'[/:]', source.rstrip('/'))[-1])
    else:
        raise PlanError('%s: expected SOURCE, NAME=SOURCE or NAME SOURCE, got %r' % (where, spec))
    if len(source.split()) != 1:
        raise PlanError('%s: expected SOURCE, NAME=SOURCE or NAME SOURCE, got %r' % (where, spec))
    if source.startswith('-'):      # git clone would take it as an option (--upload-pack=...)
        raise PlanError('%s: the source %r must not begin with "-"' % (where, source))
    if not PROJECT_NAME_RE.match(name) or '..' in name.split('/'):
        raise PlanError('%s: %r is not a usable project name' % (where, name))
    if not is_url(source):
        source = os.path.abspath(os.path.join(base_dir, os.path.expanduser(source)))
    return Project(name, source)


def parse_projects_file(text, where, base_dir):
    """Projects of a file: one per line, '#' comments; relative paths from base_dir."""
    projects = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = re.sub(r'(^|\s)#.*$', '', line).strip()
        if line:
            projects.append((parse_project(line, base_dir, '%s:%d' % (where, lineno)),
                             '%s:%d' % (where, lineno)))
    return projects


def unique_projects(located):
    """[(Project, where)] -> [Project]; a name given twice is an error naming both places."""
    first = {}
    out = []
    for project, where in located:
        if project.name in first:
            raise PlanError('%s: project %r is already given at %s'
                            % (where, project.name, first[project.name]))
        first[project.name] = where
        out.append(project)
    return out


# ---------------------------------------------------------------- the plan

BRANCH_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_./-]*$')


def sorted_unique(items):
    """Sorted without regard to case (SQLAlchemy among the s's), each once."""
    return tuple(sorted(set(items), key=lambda item: (item.lower(), item)))


@dataclass(frozen=True)
class ProjectRequirements:
    """A project that has the branch, where it was read, and its requirement lines."""
    project: str
    ref: str
    lines: Tuple[str, ...]


@dataclass(frozen=True)
class ProjectFile:
    project: str
    ref: str
    path: str


@dataclass(frozen=True)
class BranchPlan:
    branch: str
    debs: Tuple[str, ...]                      # sorted, unique
    images: Tuple[str, ...]                    # stackrc order, unique
    requirements: Tuple[ProjectRequirements, ...] = ()   # projects having the branch
    global_requirements: Tuple[str, ...] = ()  # sorted, unique
    constraints: Optional[ProjectFile] = None  # upper-constraints.txt, when a project has it
    missing: Tuple[str, ...] = ()              # projects known not to have the branch
    pending: Tuple[str, ...] = ()              # projects not readable before the clone

    @property
    def pip_requirements(self):
        """Every pip requirement line of the branch, sorted and unique."""
        lines = set(self.global_requirements)
        for entry in self.requirements:
            lines.update(entry.lines)
        return sorted_unique(lines)


@dataclass(frozen=True)
class Plan:
    devstack: str
    distro: str
    branches: Tuple[BranchPlan, ...]
    projects: Tuple[Project, ...]
    repos: Tuple[Tuple[str, str, bool], ...] = ()   # (project, path read, is the cache clone)
    notes: Tuple[str, ...] = ()

    def branch(self, name):
        for plan in self.branches:
            if plan.branch == name:
                return plan
        raise KeyError(name)

    @property
    def images(self):
        """Every image URL of every branch, in order, unique."""
        out = []
        for plan in self.branches:
            out += [u for u in plan.images if u not in out]
        return tuple(out)

    def repo(self, project):
        for name, path, clone in self.repos:
            if name == project:
                return path, clone
        return None

    def to_dict(self):
        return dataclasses.asdict(self)


def _branch_list(branches):
    out = []
    for branch in branches:
        if not BRANCH_RE.match(branch) or '..' in branch or branch.endswith(('/', '.lock')):
            raise PlanError('%r is not a usable branch name' % branch)
        if branch not in out:
            out.append(branch)
    if not out:
        raise PlanError('no branch given')
    return out


def devstack_trees(devstack, branches):
    """[(branch, tree)]: git refs of a checkout, or the directory itself for one branch."""
    if not os.path.isdir(devstack):
        raise PlanError('%s: no such devstack checkout' % devstack)
    if not is_git_checkout(devstack):
        if len(branches) > 1:
            raise PlanError('%s is not a git checkout, so it holds one branch, not %d (%s)'
                            % (devstack, len(branches), ', '.join(branches)))
        return [(branches[0], DirectoryTree(devstack))]
    trees = []
    for branch in branches:
        ref = resolve_branch(devstack, branch, ('refs/remotes/origin/', 'refs/heads/'))
        if ref is None:
            raise PlanError('%s: no branch %s (tried origin/%s and %s)'
                            % (devstack, branch, branch, branch))
        trees.append((branch, GitTree(devstack, ref)))
    return trees


def devstack_debs(tree, distro, include_testonly=True):
    names = tree.listdir(DEBS_DIR)
    if names is None:
        raise PlanError('%s: no such directory (is this a devstack checkout?)'
                        % tree.where(DEBS_DIR))
    names = [n for n in names if not n.startswith('.') and not n.endswith('~')]
    if not names:
        raise PlanError('%s: no package lists' % tree.where(DEBS_DIR))
    debs = set()
    for name in names:
        relpath = DEBS_DIR + '/' + name
        debs.update(parse_debs(tree.read(relpath), tree.where(relpath), distro, include_testonly))
    return sorted_unique(debs)


def devstack_images(tree, variables=None, machine=None):
    text = tree.read(STACKRC)
    if text is None:
        raise PlanError('%s: missing (is this a devstack checkout?)' % tree.where(STACKRC))
    return tuple(parse_stackrc_images(text, tree.where(STACKRC), variables, machine))


def project_location(project, git_cache):
    """(path, ref prefixes, is the cache clone) to read project from; None before its clone."""
    if git_cache:
        clone = os.path.join(git_cache, project.name)
        if is_git_checkout(clone):
            return clone, ('refs/remotes/origin/',), True
    if not project.local:
        return None
    if not os.path.isdir(project.source):
        raise PlanError('project %s: %s does not exist' % (project.name, project.source))
    if _git(project.source, 'rev-parse', '--git-dir').returncode != 0:
        raise PlanError('project %s: %s is not a git repository'
                        % (project.name, project.source))
    return project.source, ('refs/heads/',), False


def compute_plan(devstack, distro, branches, projects=(), git_cache=None,
                 include_testonly=True, variables=None, machine=None, read_projects=True):
    """The Plan.  Reads the devstack checkout and the projects; writes and runs nothing.

    devstack: a checkout (each branch read from origin/BRANCH, else BRANCH) or
    a plain directory (exactly one branch).  projects: Project objects.
    git_cache: where the clones live, read in preference to local sources.
    read_projects=False skips the projects' files (prepare-node's fetch phase).
    """
    devstack = os.path.abspath(os.path.expanduser(devstack))
    branches = _branch_list(list(branches))
    if not distro or not re.match(r'^[A-Za-z0-9.-]+$', distro):
        raise PlanError('%r is not a distribution codename' % (distro,))
    projects = tuple(projects)
    notes: List[str] = []
    per_branch = {}
    for branch, tree in devstack_trees(devstack, branches):
        per_branch[branch] = {
            'debs': devstack_debs(tree, distro, include_testonly),
            'images': devstack_images(tree, variables, machine),
            'requirements': [], 'global_requirements': (), 'global_from': None,
            'constraints': None, 'missing': [], 'pending': [],
        }
    repos = []
    for project in projects:
        location = project_location(project, git_cache) if read_projects else None
        if location is None:
            for branch in branches:
                per_branch[branch]['pending'].append(project.name)
            if read_projects:
                notes.append('%s is read after it is cloned from %s'
                             % (project.name, redact(project.source)))
            continue
        path, prefixes, is_clone = location
        repos.append((project.name, path, is_clone))
        for branch in branches:
            data = per_branch[branch]
            ref = resolve_branch(path, branch, prefixes)
            if ref is None:
                data['missing'].append(project.name)
                notes.append('%s has no branch %s' % (project.name, branch))
                continue
            tree = GitTree(path, ref)
            lines: List[str] = []
            for relpath in REQUIREMENT_FILES:
                found = _read_requirements(tree, relpath)
                if found:
                    lines += found[0]
                    notes += found[1]
            data['requirements'].append(
                ProjectRequirements(project.name, ref, sorted_unique(lines)))
            found = _read_requirements(tree, GLOBAL_REQUIREMENTS) \
                if data['global_from'] is None else None
            if found:
                data['global_from'] = project.name
                data['global_requirements'] = sorted_unique(found[0])
                notes += found[1]
            if data['constraints'] is None and tree.read(UPPER_CONSTRAINTS) is not None:
                data['constraints'] = ProjectFile(project.name, ref, UPPER_CONSTRAINTS)
    plans = []
    for branch in branches:
        data = per_branch[branch]
        plans.append(BranchPlan(
            branch=branch, debs=data['debs'], images=data['images'],
            requirements=tuple(data['requirements']),
            global_requirements=data['global_requirements'],
            constraints=data['constraints'], missing=tuple(data['missing']),
            pending=tuple(data['pending'])))
    return Plan(devstack=devstack, distro=distro, branches=tuple(plans), projects=projects,
                repos=tuple(repos), notes=tuple(notes))


# ---------------------------------------------------------------- commands

@dataclass(frozen=True)
class Command:
    """One command: an argument list, never a shell string.

    network: retried with backoff and run under a timeout by prepare-node.sh.
    stdout: a file the output goes to.  cleanup: a path removed before each
    attempt and after a failure (a half-made clone or download).
    """
    argv: Tuple[str, ...]
    label: str
    network: bool = False
    stdout: Optional[str] = None
    cleanup: Optional[str] = None

    def shell(self):
        """The command as one line for consoles (which are public): URL passwords hidden."""
        line = shlex.join(redact(arg) for arg in self.argv)
        if self.stdout:
            line += ' > ' + shlex.quote(self.stdout)
        return line


def redact(text):
    """text with the password of any URL in it replaced by ***."""
    return re.sub(r'(://[^/\s:@]*:)[^/\s@]*@', r'\1***@', text)


def _steps(steps):
    steps = tuple(steps)
    for step in steps:
        if step not in STEPS:
            raise PlanError('unknown step %r; valid steps are: %s' % (step, ', '.join(STEPS)))
    return steps


def tool_commands(steps=STEPS, sudo=()):
    """apt-get update and the download tools of the enabled steps (apt step only).

    --no-upgrade: a tool that is already there is left exactly as it is.
    """
    steps = _steps(steps)
    if 'apt' not in steps:
        return []
    sudo = tuple(sudo)
    tools = ['git'] + [STEP_TOOLS[s] for s in ('pip', 'images') if s in steps]
    return [
        Command(sudo + ('apt-get', 'update'), 'apt: update the package lists', network=True),
        Command(sudo + ('apt-get', 'install', '--assume-yes', '--no-upgrade') + tuple(tools),
                'apt: install the download tools (%s)' % ', '.join(tools), network=True),
    ]


def _make_dir(path, sudo):
    """mkdir -p when the nearest existing parent is writable, else sudo install -d for us."""
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.access(parent, os.W_OK) or not sudo:
        argv = ('mkdir', '-p', path)
    else:
        argv = tuple(sudo) + ('install', '-d', '-o', pwd.getpwuid(os.getuid()).pw_name,
                              '-g', grp.getgrgid(os.getgid()).gr_name, path)
    return Command(argv, 'dir: create %s' % path)


def _safe_branch(branch):
    return branch.replace('/', '-')


def constraints_file(pip_cache, branch):
    return os.path.join(pip_cache, 'constraints', _safe_branch(branch) + '.txt')


def fetch_commands(plan, git_cache, pip_cache, steps=STEPS, sudo=()):
    """Cache directories, deb downloads, image downloads, git clones or fetches.

    Looks at the file system to choose clone or fetch and to skip images
    already in devstack's files/; runs nothing.
    """
    steps = _steps(steps)
    sudo = tuple(sudo)
    commands = []
    dirs = []
    if 'git' in steps and plan.projects:
        dirs.append(git_cache)
    if 'pip' in steps and plan.projects:
        dirs += [pip_cache, os.path.join(pip_cache, 'constraints')]
    for path in dirs:
        if not os.path.isdir(path):
            commands.append(_make_dir(path, sudo))
    if 'apt' in steps:
        for branch in plan.branches:
            if branch.debs:
                commands.append(Command(
                    sudo + ('apt-get', 'install', '--assume-yes', '--download-only') + branch.debs,
                    'apt: download %d debs for %s' % (len(branch.debs), branch.branch),
                    network=True))
    if 'images' in steps:
        files = os.path.join(plan.devstack, 'files')
        names = set()
        for url in plan.images:
            name = image_file_name(url)
            if url.startswith('file:') or not name or name in names:
                continue
            names.add(name)
            dest = os.path.join(files, name)
            if os.path.exists(dest):
                continue
            commands.append(Command(
                ('curl', '--fail', '--silent', '--show-error', '--location',
                 '--output', dest + '.part', url),
                'image: download %s' % name, network=True, cleanup=dest + '.part'))
            commands.append(Command(('mv', '-f', dest + '.part', dest), 'image: keep %s' % name))
    if 'git' in steps:
        for project in plan.projects:
            dest = os.path.join(git_cache, project.name)
            if is_git_checkout(dest):
                commands.append(Command(('git', '-C', dest, 'remote', 'set-url', 'origin',
                                         project.source),
                                        'git: point %s at %s'
                                        % (project.name, redact(project.source))))
                commands.append(Command(('git', '-C', dest, 'fetch', '--prune', 'origin'),
                                        'git: fetch %s' % project.name, network=True))
            elif os.path.exists(dest):
                raise PlanError('%s exists and is not a git clone: remove it or choose another '
                                'git cache' % dest)
            else:
                commands.append(Command(('git', 'clone', project.source, dest),
                                        'git: clone %s' % project.name, network=True,
                                        cleanup=dest))
    return commands


def cache_commands(plan, git_cache, pip_cache, steps=STEPS, python='python3'):
    """Local branches of the clones, constraints files and pip downloads.

    When the git step runs, commands read the cache clones (origin/BRANCH),
    which hold what the sources hold; otherwise wherever the plan read.
    """
    steps = _steps(steps)
    commands = []
    if 'git' in steps:
        for project in plan.projects:
            have = [b.branch for b in plan.branches
                    if any(r.project == project.name for r in b.requirements)]
            dest = os.path.join(git_cache, project.name)
            for i, branch in enumerate(have):
                if i == 0:
                    argv = ('git', '-C', dest, 'checkout', '--quiet', '--force', '-B', branch,
                            'origin/' + branch)
                    label = 'git: check out %s %s' % (project.name, branch)
                else:
                    argv = ('git', '-C', dest, 'branch', '--quiet', '--force', branch,
                            'origin/' + branch)
                    label = 'git: branch %s %s' % (project.name, branch)
                commands.append(Command(argv, label))
    if 'pip' in steps:
        for branch in plan.branches:
            constraint_args = ()
            if branch.constraints is not None:
                c = branch.constraints
                if 'git' in steps:
                    repo, ref = os.path.join(git_cache, c.project), 'origin/' + branch.branch
                else:
                    repo, ref = plan.repo(c.project)[0], c.ref
                target = constraints_file(pip_cache, branch.branch)
                commands.append(Command(('git', '-C', repo, 'show', '%s:%s' % (ref, c.path)),
                                        'pip: constraints for %s from %s'
                                        % (branch.branch, c.project),
                                        stdout=target, cleanup=target))
                constraint_args = ('--constraint', target)
            download = (python, '-m', 'pip', 'download', '--dest', pip_cache) + constraint_args
            groups = [(r.project, r.lines) for r in branch.requirements]
            if branch.global_requirements:
                groups.append(('global', branch.global_requirements))
            for name, lines in groups:
                if lines:
                    commands.append(Command(download + tuple(lines),
                                            'pip: download %s requirements for %s (%d)'
                                            % (name, branch.branch, len(lines)),
                                            network=True))
    return commands


def render_commands(plan, git_cache, pip_cache, steps=STEPS, sudo=(), python='python3'):
    """Every command of a run, in order: tools, fetch, cache."""
    return (tool_commands(steps, sudo) + fetch_commands(plan, git_cache, pip_cache, steps, sudo)
            + cache_commands(plan, git_cache, pip_cache, steps, python))


def records(commands):
    """The NUL-separated form prepare-node.sh reads: for each command
    kind, label, shell line, stdout file, cleanup path, argc, then the arguments."""
    out = bytearray()
    for c in commands:
        fields = ['network' if c.network else 'local', c.label, c.shell(), c.stdout or '',
                  c.cleanup or '', str(len(c.argv))] + list(c.argv)
        for field in fields:
            out += os.fsencode(field) + b'\0'
    return bytes(out)


# ---------------------------------------------------------------- command line

def _split_list(values):
    out = []
    for value in values or ():
        out += [v for v in re.split(r'[\s,]+', value) if v]
    return out


def host_distro(os_release='/etc/os-release'):
    try:
        with open(os_release) as f:
            for line in f:
                key, _, value = line.strip().partition('=')
                if key == 'VERSION_CODENAME' and value.strip('"\''):
                    return value.strip('"\'')
    except OSError:
        pass
    raise PlanError('cannot tell the distribution codename from %s: pass --dist' % os_release)


def _parser():
    p = argparse.ArgumentParser(
        prog='devstack_cache_plan.py',
        description='Plan what a devstack template node caches (debs, pip, images, git) and '
                    'print the commands; prepare-node.sh runs them.')
    p.add_argument('action', choices=('plan', 'commands'),
                   help='plan: the plan as JSON; commands: the commands of --phase')
    p.add_argument('--devstack', default=os.path.expanduser('~/devstack'), metavar='DIR')
    p.add_argument('--dist', metavar='CODENAME',
                   help='distribution for dist:/not: markers (default: from /etc/os-release)')
    p.add_argument('--branches', action='append', metavar='LIST',
                   help='branches, comma or space separated, repeatable (default: master)')
    p.add_argument('--project', action='append', default=[], metavar='SPEC',
                   help='NAME=SOURCE, NAME SOURCE or SOURCE (git URL or local path); repeatable')
    p.add_argument('--projects-file', action='append', default=[], metavar='FILE',
                   help='one project SPEC per line, # comments')
    p.add_argument('--git-cache', default=os.path.expanduser('~/workspace-cache'),
                   metavar='DIR')
    p.add_argument('--pip-cache', default='/var/cache/pip', metavar='DIR')
    p.add_argument('--steps', default=','.join(STEPS), metavar='LIST',
                   help='of %s (default: all)' % ', '.join(STEPS))
    p.add_argument('--no-testonly', action='store_true', help='leave out "# testonly" debs')
    p.add_argument('--var', action='append', default=[], metavar='NAME=VALUE',
                   help='a stackrc variable, as local.conf would set it; repeatable')
    p.add_argument('--machine', default=platform.machine(),
                   help='the value of $(uname -m) in stackrc (default: this machine)')
    p.add_argument('--sudo', default=None, metavar='CMD',
                   help='prefix of apt-get and root-owned mkdir (default: none as root, '
                        'else "sudo -n")')
    p.add_argument('--python', default='python3', help='the python that runs pip')
    p.add_argument('--phase', choices=('all',) + PHASES, default='all')
    p.add_argument('--format', choices=('lines', 'records'), default='lines')
    return p


def _options(args):
    variables = {}
    for item in args.var:
        name, sep, value = item.partition('=')
        if not sep or not re.match('^%s$' % NAME, name):
            raise PlanError('--var %s: expected NAME=VALUE' % item)
        variables[name] = value
    located = []
    for path in args.projects_file:
        path = os.path.expanduser(path)
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise PlanError('%s: %s' % (path, e.strerror)) from None
        located += parse_projects_file(text, path, os.path.dirname(os.path.abspath(path)))
    for spec in args.project:
        located.append((parse_project(spec, os.getcwd(), '--project %s' % spec),
                        '--project %s' % spec))
    if args.sudo is None:
        sudo = () if os.geteuid() == 0 else ('sudo', '-n')
    else:
        sudo = tuple(shlex.split(args.sudo))
    return variables, unique_projects(located), sudo


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        variables, projects, sudo = _options(args)
        steps = _steps(_split_list([args.steps]))
        branches = _split_list(args.branches) or ['master']
        git_cache = os.path.abspath(os.path.expanduser(args.git_cache))
        pip_cache = os.path.abspath(os.path.expanduser(args.pip_cache))
        commands = []
        plan = None
        if args.action == 'plan' or args.phase != 'tools':
            plan = compute_plan(
                args.devstack, args.dist or host_distro(), branches, projects, git_cache,
                include_testonly=not args.no_testonly, variables=variables,
                machine=args.machine, read_projects=args.action == 'plan'
                or args.phase in ('all', 'cache'))
        if args.action == 'plan':
            print(redact(json.dumps(plan.to_dict(), indent=2)))
            return 0
        if args.phase in ('all', 'tools'):
            commands += tool_commands(steps, sudo)
        if args.phase in ('all', 'fetch'):
            commands += fetch_commands(plan, git_cache, pip_cache, steps, sudo)
        if args.phase in ('all', 'cache'):
            commands += cache_commands(plan, git_cache, pip_cache, steps, args.python)
            for note in plan.notes:
                print('note: %s' % note, file=sys.stderr)
    except PlanError as e:
        for line in e.lines():
            print('error: %s' % line, file=sys.stderr)
        return e.exit_code
    if args.format == 'records':
        sys.stdout.flush()
        sys.stdout.buffer.write(records(commands))
    else:
        for command in commands:
            print(command.shell())
    return 0


if __name__ == '__main__':
    sys.exit(main())
