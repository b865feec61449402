"""What a devstack template node caches before its snapshot, seen from the Jenkins side.

The logic lives in ``node-setup/devstack_cache_plan.py``: that file is copied
to the template VM with ``prepare-node.sh`` and runs there with nothing but
python3's standard library, since the devstack-gate package is not installed
on the template.  This module loads that same file (no copy, so the plan the
image build previews and the plan the template runs cannot drift apart),
re-exports its API and adds what the image build needs to call the script.

API (see the planner's docstrings for details):

- ``compute_plan(devstack, distro, branches, projects=(), git_cache=None,
  include_testonly=True, variables=None, machine=None)`` -> ``Plan``: per
  branch (``plan.branch(name)`` -> ``BranchPlan``) the sorted, unique ``debs``,
  the ``images`` URLs, the ``requirements`` of each project that has the
  branch, the ``global_requirements``, the ``constraints`` file and
  ``pip_requirements`` (all lines, sorted, unique); ``plan.projects`` (the git
  repos), ``plan.images`` and ``plan.notes``.  Raises ``PlanError`` naming the
  file and line of a missing or malformed tree.
- ``render_commands(plan, git_cache, pip_cache, steps=STEPS, sudo=(),
  python='python3')`` -> ``[Command]`` in run order; each has ``argv`` (a
  tuple, never a shell string), ``label``, ``network``, ``stdout``,
  ``cleanup`` and ``shell()`` (the line ``--dry-run`` prints).
- ``parse_debs``, ``parse_stackrc_images``, ``parse_requirements``,
  ``parse_project``, ``parse_projects_file``: the pure parsers.
- ``prepare_node_argv(...)`` -> the argument list that runs prepare-node.sh on
  the template, once node-setup/ is copied there.
"""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_SETUP_DIR = os.path.join(ROOT, 'node-setup')
PLANNER = os.path.join(NODE_SETUP_DIR, 'devstack_cache_plan.py')
PREPARE_NODE = os.path.join(NODE_SETUP_DIR, 'prepare-node.sh')
_MODULE = 'devstackgate._devstack_cache_plan'


def _load_planner():
    module = sys.modules.get(_MODULE)
    if module is not None:
        return module
    if not os.path.isfile(PLANNER):
        raise ImportError('%s is missing: devstackgate.devstack_cache needs the node-setup '
                          'directory of a devstack-gate checkout' % PLANNER)
    spec = importlib.util.spec_from_file_location(_MODULE, PLANNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module     # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return module


planner = _load_planner()

PlanError = planner.PlanError
Project = planner.Project
ProjectRequirements = planner.ProjectRequirements
ProjectFile = planner.ProjectFile
BranchPlan = planner.BranchPlan
Plan = planner.Plan
Command = planner.Command
STEPS = planner.STEPS
parse_debs = planner.parse_debs
parse_stackrc_images = planner.parse_stackrc_images
parse_requirements = planner.parse_requirements
parse_project = planner.parse_project
parse_projects_file = planner.parse_projects_file
compute_plan = planner.compute_plan
tool_commands = planner.tool_commands
fetch_commands = planner.fetch_commands
cache_commands = planner.cache_commands
render_commands = planner.render_commands


def prepare_node_argv(remote_dir, devstack='devstack', branches=('master',), projects=(),
                      git_cache=None, pip_cache=None, steps=None, dist=None, variables=None,
                      extra=()):
    """The command that runs prepare-node.sh on the template, as an argument list.

    remote_dir: where node-setup/ was copied on the template.  Relative paths
    are relative to the login directory (an SSH command starts in $HOME); '~'
    is expanded by the planner, so quoting the list with shlex.join is safe.
    projects: Project objects or 'NAME=SOURCE' strings.
    """
    argv = ['bash', remote_dir.rstrip('/') + '/prepare-node.sh', '--devstack', devstack,
            '--branches', ','.join(branches)]
    for project in projects:
        if isinstance(project, Project):
            project = '%s=%s' % (project.name, project.source)
        argv += ['--project', project]
    for option, value in (('--git-cache', git_cache), ('--pip-cache', pip_cache),
                          ('--dist', dist), ('--steps', ','.join(steps) if steps else None)):
        if value:
            argv += [option, value]
    for name, value in sorted((variables or {}).items()):
        argv += ['--var', '%s=%s' % (name, value)]
    return argv + list(extra)
